"""``checkpoint`` state files are followed only where they belong, read up to a bound, and never quoted.

- A state file read from a URL may name only the same store (scheme and host or bucket), else only
  the copy in the directory named is read: an HTTP checkpoint naming ``file:///...`` or another host
  opens nothing there. A local one is not sent to a URL.
- One that does not parse is reported by file, line and column: its contents (a symlinked ``.netrc``)
  never reach a message. One larger than ``STATE_FILE_LIMIT`` is refused, having read no more than
  that; one nested 5,000 deep is a one-line error.
- TF Serving version directories: ``²`` (``str.isdigit()`` but not ``int()``-able) is not a version;
  versions are compared as digit strings, leading zeros and all.

Checkpoints are written byte by byte (``hostile_files``); servers are real, on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import hostile_files as h
import tf2flax
from servers import RangeHTTPServer
from tf2flax.errors import CheckpointNotFoundError, CorruptCheckpointError
from tf2flax.formats.locate import STATE_FILE_LIMIT

SECRET = "hunter2-s3cr3t"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("TF2FLAX_RETRIES", "1")
    monkeypatch.setenv("TF2FLAX_RETRY_DELAY", "0.05")


def _checkpoint(prefix: Path, value: float) -> str:
    data = np.full(4, value, np.float32).tobytes()
    crc = h.crc32c.crc32c(data)
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    return h.write_bundle(prefix, {b"t": h.entry(h.DT_FLOAT, (4,), crc=masked)}, data)


def _state(directory: Path, path: str) -> None:
    (directory / "checkpoint").write_text(f'model_checkpoint_path: "{path}"\n')


# ---- following only what belongs -----------------------------------------------------------------

def test_http_state_file_naming_a_local_file_url_opens_nothing_local(tmp_path):
    local = _checkpoint(tmp_path / "local" / "secret-ckpt", 7.0)
    served = tmp_path / "served"
    served.mkdir()
    _state(served, "file://" + local)
    with RangeHTTPServer(served) as server:
        with pytest.raises(CheckpointNotFoundError) as caught:
            tf2flax.open_checkpoint(server.url)
    assert f"{server.url}secret-ckpt" in str(caught.value)   # only the copy in the directory named was looked for


def test_http_state_file_naming_another_host_reads_only_the_copy_here(tmp_path):
    other_root, served = tmp_path / "other", tmp_path / "served"
    _checkpoint(other_root / "model.ckpt-5", 1.0)
    _checkpoint(served / "model.ckpt-5", 2.0)
    with RangeHTTPServer(other_root) as other, RangeHTTPServer(served) as server:
        _state(served, other.url + "model.ckpt-5")
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # the other host's path is not "another place" to warn about
            ckpt = tf2flax.open_checkpoint(server.url)
        np.testing.assert_array_equal(ckpt.read("t"), np.full(4, 2.0, np.float32))
        assert other.requests == 0
        (served / "model.ckpt-5.index").unlink()
        with pytest.raises(CheckpointNotFoundError, match="has an .index file"):
            tf2flax.open_checkpoint(server.url)
        assert other.requests == 0


def test_http_state_file_naming_the_same_server_is_followed(tmp_path):
    served = tmp_path / "served"
    _checkpoint(served / "runs" / "a" / "model.ckpt-9", 3.0)
    (served / "moved").mkdir()
    with RangeHTTPServer(served) as server:
        _state(served / "moved", server.url + "runs/a/model.ckpt-9")
        ckpt = tf2flax.open_checkpoint(server.url + "moved/")
        np.testing.assert_array_equal(ckpt.read("t"), np.full(4, 3.0, np.float32))


def test_local_state_file_naming_a_url_is_not_fetched(tmp_path):
    served, local = tmp_path / "served", tmp_path / "local"
    _checkpoint(served / "model.ckpt-1", 1.0)
    local.mkdir()
    with RangeHTTPServer(served) as server:
        _state(local, server.url + "model.ckpt-1")
        with pytest.raises(CheckpointNotFoundError):
            tf2flax.open_checkpoint(local)
        assert server.requests == 0


# ---- never quoted, bounded, not too deep ---------------------------------------------------------

def test_unparsable_state_file_is_reported_by_line_and_column_not_contents(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine example.com\nlogin me password {SECRET}\n")
    run = tmp_path / "run"
    _checkpoint(run / "model.ckpt-1", 1.0)
    (run / "checkpoint").symlink_to(netrc)
    with pytest.raises(CorruptCheckpointError) as caught:
        tf2flax.open_checkpoint(run)
    message = str(caught.value)
    assert SECRET not in message and "example.com" not in message and "machine" not in message, message
    assert message == f"{run}/checkpoint: not a valid checkpoint state file: does not parse at line 1, column 9"
    cli = subprocess.run([sys.executable, "-m", "tf2flax", "ls", str(run)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert cli.returncode == 2 and SECRET not in cli.stderr and cli.stderr.count("\n") == 1, cli.stderr


def test_state_file_that_is_not_utf8_is_reported_by_byte(tmp_path):
    _checkpoint(tmp_path / "model.ckpt-1", 1.0)
    (tmp_path / "checkpoint").write_bytes(b'model_checkpoint_path: "\xff' + SECRET.encode() + b'"')
    with pytest.raises(CorruptCheckpointError, match=r"not UTF-8 text \(byte 24\)$") as caught:
        tf2flax.open_checkpoint(tmp_path)
    assert SECRET not in str(caught.value)


def test_state_file_nested_5000_deep_is_one_line(tmp_path):
    _checkpoint(tmp_path / "model.ckpt-1", 1.0)
    (tmp_path / "checkpoint").write_text("a { " * 5000 + "}" * 5000)
    with pytest.raises(CorruptCheckpointError, match="not a valid checkpoint state file: nested too deeply"):
        tf2flax.open_checkpoint(tmp_path)


def test_large_state_file_is_refused_after_a_bounded_read(tmp_path):
    served = tmp_path / "served"
    _checkpoint(served / "model.ckpt-1", 1.0)
    (served / "checkpoint").write_bytes(b'model_checkpoint_path: "model.ckpt-1"\n' + b"#" * (64 << 20))
    with pytest.raises(CorruptCheckpointError, match=f"larger than {STATE_FILE_LIMIT} bytes"):
        tf2flax.open_checkpoint(served)
    with RangeHTTPServer(served) as server:
        with pytest.raises(CorruptCheckpointError, match=f"larger than {STATE_FILE_LIMIT} bytes"):
            tf2flax.open_checkpoint(server.url)
        assert server.bytes_of("/checkpoint") <= STATE_FILE_LIMIT + 1, server.bytes_of("/checkpoint")


def test_small_remote_state_file_is_still_read(tmp_path):
    served = tmp_path / "served"
    _checkpoint(served / "model.ckpt-1", 4.0)
    _state(served, "model.ckpt-1")
    with RangeHTTPServer(served) as server:
        np.testing.assert_array_equal(tf2flax.open_checkpoint(server.url).read("t"), np.full(4, 4.0, np.float32))


# ---- TF Serving version directories ----------------------------------------------------------------

def _version(base: Path, name: str, value: float) -> None:
    _checkpoint(base / name / "variables" / "variables", value)
    (base / name / "saved_model.pb").write_bytes(b"")


def test_serving_versions_that_int_refuses_are_no_traceback(tmp_path):
    _version(tmp_path, "7", 7.0)
    _version(tmp_path, "²", 2.0)   # str.isdigit(), but int() raises
    ckpt = tf2flax.open_checkpoint(tmp_path)
    np.testing.assert_array_equal(ckpt.read("t"), np.full(4, 7.0, np.float32))
    _version(tmp_path, "9" * 200, 9.0)   # the highest version (a file name holds at most 255 bytes)
    _version(tmp_path, "0" * 250 + "8", 8.0)
    ckpt = tf2flax.open_checkpoint(tmp_path)
    np.testing.assert_array_equal(ckpt.read("t"), np.full(4, 9.0, np.float32))
