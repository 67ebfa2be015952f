"""With default settings, a server that stops sending fails a read within 60 s (issue 20: over 200 s).

Three real servers on 127.0.0.1: one that answers byte ranges with half the body and then nothing
(``RangeHTTPServer(misbehave="stall")``), one that accepts connections and never answers, one whose
accept queue is full (connections never complete: curl gives up after 30 s, and each retry took 30 s
more, 320 s in all). Each read runs in a fresh interpreter with no ``TF2FLAX_*`` or
``TENSORSTORE_CURL_*`` setting (tensorstore reads its stall timeout once per process), all at once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

import hostile_files as h
from servers import RangeHTTPServer

_READ = """
import sys, time
import tf2flax
from tf2flax.errors import StorageError
began = time.monotonic()
try:
    tf2flax.open_checkpoint(sys.argv[1]).read("t")
    print("read")
except StorageError as e:
    print(f"{time.monotonic() - began:.1f} s: {e}")
"""


def _default_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF2FLAX_", "TENSORSTORE_CURL_"))}
    env["PYTHONPATH"] = str(Path(__file__).parent.parent)
    return env


def _start(url: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _READ, url], env=_default_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


class _SilentServer:
    """Accepts every connection on 127.0.0.1 and never sends a byte."""

    def __init__(self):
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/"
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.connections.append(self._socket.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self._socket.close()
        for c in self.connections:
            c.close()


class _FullServer:
    """Listens on 127.0.0.1 with its accept queue filled and never accepts: new connections hang."""

    def __init__(self):
        self._socket = socket.create_server(("127.0.0.1", 0), backlog=0)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/"
        self._fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect(self._socket.getsockname())
            except BlockingIOError:
                pass
            self._fillers.append(filler)
        time.sleep(0.2)

    def close(self) -> None:
        for s in [self._socket, *self._fillers]:
            s.close()


def test_a_stalled_server_fails_within_60_s_with_default_settings(tmp_path):
    data = np.arange(300_000, dtype=np.float32).tobytes()
    crc = h.crc32c.crc32c(data)
    h.write_bundle(tmp_path / "model.ckpt-1", {b"t": h.entry(h.DT_FLOAT, (300_000,),
                                                              crc=(((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)},
                   data)
    silent, full = _SilentServer(), _FullServer()
    try:
        with RangeHTTPServer(tmp_path) as server:
            server.misbehave = "stall"   # the index is read whole; the data file's range stalls mid-body
            began = time.monotonic()
            runs = [_start(server.url + "model.ckpt-1"), _start(silent.url + "run/"), _start(full.url + "run/")]
            try:
                outs = [run.communicate(timeout=150) for run in runs]
            finally:
                for run in runs:
                    if run.poll() is None:
                        run.kill()
                        run.wait()
            elapsed = time.monotonic() - began
    finally:
        silent.close()
        full.close()
    for (stdout, stderr), what in zip(outs[:2], ["model.ckpt-1.data-00000-of-00001", "run/checkpoint"]):
        seconds, _, message = stdout.strip().partition(" s: ")
        assert message.endswith("TF2FLAX_STALL_TIMEOUT sets how long to wait"), (stdout, stderr[-2000:])
        assert what in message and "the server stopped sending (no data for 15 s, 2 attempts)" in message, message
        assert float(seconds) < 60, stdout
    seconds, _, message = outs[2][0].strip().partition(" s: ")
    assert message.startswith(f"{full.url}run/checkpoint: the server accepted no connection ("), outs[2]
    assert message.endswith("; not retried") and float(seconds) < 60, outs[2]
    assert elapsed < 90, elapsed


def test_a_stall_setting_that_is_not_a_number_is_one_line():
    env = {**_default_env(), "TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS": "9" * 5000}
    run = subprocess.run([sys.executable, "-m", "tf2flax", "ls", "http://127.0.0.1:9/run/"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.startswith("tf2flax: error: environment variable TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS=")
    assert "is not a whole number of seconds" in run.stderr and run.stderr.count("\n") == 1


def test_a_trickling_server_is_given_up_on_after_the_request_timeout(tmp_path):
    """A byte every half second is never a stall (curl's limit is 1 byte/s); the request timeout
    (default 600 s, here 4 s) ends it."""
    data = np.arange(1000, dtype=np.float32).tobytes()
    crc = h.crc32c.crc32c(data)
    h.write_bundle(tmp_path / "model.ckpt-1", {b"t": h.entry(h.DT_FLOAT, (1000,),
                                                              crc=(((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)},
                   data)
    env = {**_default_env(), "TF2FLAX_REQUEST_TIMEOUT": "4"}
    with RangeHTTPServer(tmp_path) as server:
        server.misbehave = "trickle"
        run = subprocess.run([sys.executable, "-c", _READ, server.url + "model.ckpt-1"], env=env,
                             capture_output=True, text=True, timeout=120)
    seconds, _, message = run.stdout.strip().partition(" s: ")
    assert message == (f"{server.url}model.ckpt-1.data-00000-of-00001: no complete answer (bytes 0..4000) within "
                       "4 s (the server sends too slowly); TF2FLAX_REQUEST_TIMEOUT sets how long to wait"), run
    assert float(seconds) < 30, run.stdout
