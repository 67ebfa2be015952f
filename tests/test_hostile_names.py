"""Huge and deeply nested tensor names: one short tf2flax error, never a traceback or a huge message.

The checkpoints are written by TensorFlow (its raw SaveV2 op), which accepts such names.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

import tf2flax
import tf_writers
from tf2flax.errors import MappingError


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile_names")
    huge = tf_writers.write_raw_bundle(d / "huge", {"n" * 1_000_000: np.ones(2, np.float32)})
    deep = tf_writers.write_raw_bundle(d / "deep", {"a/" * 1000 + "x": np.arange(3, dtype=np.float32),
                                                    "b" + "/" * 1000 + "c": np.ones(1, np.float32)})
    return huge, deep


def test_a_megabyte_tensor_name_is_one_short_error_before_writing(hostile, tmp_path):
    huge, _ = hostile
    with pytest.raises(MappingError, match=r"a path 1 levels deep and 1000000 characters long; convert writes at most 256 levels and 16000 characters") as caught:
        tf2flax.convert(huge, tmp_path / "out", dry_run=True)
    assert len(str(caught.value)) < 500
    out = subprocess.run([sys.executable, "-m", "tf2flax", "convert", huge, str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("tf2flax: error: ") and "tensor 'nnn" in out.stderr and out.stderr.count("\n") == 1
    assert len(out.stderr) < 500
    assert not list(tmp_path.iterdir())  # nothing written, no temporary left


def test_names_with_a_thousand_slashes_read_but_do_not_convert_to_an_unrestorable_tree(hostile, tmp_path):
    """A 1001-level output tree is written by Orbax, but JAX cannot flatten it (a nanobind SystemError)."""
    _, deep = hostile
    ckpt = tf2flax.open_checkpoint(deep)
    np.testing.assert_array_equal(ckpt.read("a/" * 1000 + "x"), np.arange(3, dtype=np.float32))
    out = subprocess.run([sys.executable, "-m", "tf2flax", "convert", deep, str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 2, out.stderr[-2000:]
    assert re.fullmatch(r"tf2flax: error: [^\n]*: tensor '(a/|b/)[^\n]*: a path 100[12] levels deep and \d+ characters "
                        r"long; convert writes at most 256 levels and 16000 characters \(rename it with a map or "
                        r"rules\)\n", out.stderr), out.stderr
    assert len(out.stderr) < 500 and not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def control_names(tmp_path_factory):
    d = tmp_path_factory.mktemp("control_names")
    return tf_writers.write_raw_bundle(d / "ckpt", {"dense/ker\nnel": np.ones(2, np.float32),
                                                    "ok": np.ones(3, np.float32),
                                                    "red\x1b[31m/x\r": np.zeros(1, np.float32)})


def _tf2flax(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tf2flax", *args], capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("extra", [(), ("--preset", "keras")])
def test_ls_keeps_one_line_per_tensor_whatever_the_names_hold(control_names, extra):
    out = _tf2flax("ls", control_names, *extra)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert len(lines) == 1 + 1 + 3 + 1 + 1, out.stdout   # opened, header, 3 tensors, footer, ""
    assert "\x1b" not in out.stdout and "\r" not in out.stdout
    assert sum("dense/ker\\nnel" in line for line in lines) == 1
    assert sum("red\\x1b[31m/x\\r" in line for line in lines) == 1


def test_convert_dry_run_keeps_one_line_per_tensor_whatever_the_names_hold(control_names, tmp_path):
    out = _tf2flax("convert", control_names, str(tmp_path / "out"), "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\r" not in out.stdout
    lines = out.stdout.splitlines()
    assert not any(line.startswith("nel") for line in lines), out.stdout
    plan = [line for line in lines if "<-" in line and not line.startswith("  ")]
    assert len(plan) == 3, out.stdout
    assert any(line.startswith("dense/ker\\nnel <- dense/ker\\nnel") for line in plan), out.stdout
    assert not (tmp_path / "out").exists()
