"""A FIFO, a device or a directory where a checkpoint file should be is refused at once, never read.

Reading a FIFO waits forever for a writer, so every case runs in a fresh interpreter with a timeout:
a hang fails the test instead of stalling the suite. The checkpoints are written byte by byte
(``hostile_files``), then one of their files is replaced by a FIFO.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import hostile_files as h

DATA = ".data-00000-of-00001"
TIMEOUT = 90   # a refusal takes well under a second; a hang is what the timeout catches


def _checkpoint(directory: Path) -> str:
    values = np.arange(4, dtype=np.float32).tobytes()
    crc = h.crc32c.crc32c(values)
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    return h.write_bundle(directory / "ckpt", {b"t": h.entry(h.DT_FLOAT, (4,), crc=masked)}, values)


def _fifo(path: str) -> None:
    os.remove(path)
    os.mkfifo(path)


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=cwd)


def _read(path: str) -> subprocess.CompletedProcess:
    return _run("-c", "import sys, tf2flax\n"
                      "try:\n"
                      "    tf2flax.open_checkpoint(sys.argv[1]).read('t')\n"
                      "except tf2flax.errors.Tf2FlaxError as e:\n"
                      "    print(type(e).__name__, e)\n", path)


def test_fifo_as_data_file_is_refused_by_read_and_by_convert(tmp_path):
    prefix = _checkpoint(tmp_path)
    _fifo(prefix + DATA)
    out = _read(prefix)
    assert out.stdout.startswith(f"StorageError {prefix}{DATA}: is a FIFO (named pipe), not a regular file"), out
    cli = _run("-m", "tf2flax", "convert", prefix, str(tmp_path / "out"), "--quiet")
    assert cli.returncode == 2 and cli.stderr.startswith("tf2flax: error: ") and "is a FIFO" in cli.stderr, cli
    assert cli.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_fifo_as_index_is_refused(tmp_path):
    prefix = _checkpoint(tmp_path)
    _fifo(prefix + ".index")
    out = _read(prefix)
    assert out.stdout.startswith(f"StorageError {prefix}.index: is a FIFO"), out


def test_fifo_as_state_file_is_refused(tmp_path):
    _checkpoint(tmp_path)
    os.mkfifo(tmp_path / "checkpoint")
    out = _read(str(tmp_path))
    assert out.stdout.startswith(f"StorageError {tmp_path}/checkpoint: is a FIFO"), out


def test_fifo_as_a_v1_checkpoint_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "model.ckpt")
    out = _read(str(tmp_path / "model.ckpt"))
    assert out.stdout.startswith(f"StorageError {tmp_path}/model.ckpt: is a FIFO"), out


def test_device_and_directory_as_data_file_are_refused(tmp_path):
    prefix = _checkpoint(tmp_path)
    os.remove(prefix + DATA)
    os.symlink("/dev/zero", prefix + DATA)
    assert _read(prefix).stdout.startswith(f"StorageError {prefix}{DATA}: is a device, not a regular file")
    os.remove(prefix + DATA)
    os.mkdir(prefix + DATA)
    assert _read(prefix).stdout.startswith(f"StorageError {prefix}{DATA}: is a directory, not a regular file")


def test_fifo_behind_a_file_url_is_refused(tmp_path):
    """tensorstore's file driver would wait on the FIFO too."""
    prefix = _checkpoint(tmp_path)
    _fifo(prefix + DATA)
    out = _read("file://" + prefix)
    assert out.stdout.startswith(f"StorageError {prefix}{DATA}: is a FIFO"), out
