"""Closing a checkpoint while other threads read it: every read gives the checkpoint's values or
raises StorageError ("the checkpoint is closed"), never another file's bytes, a bare OSError or a fault.

The race runs in a fresh interpreter (``close_race_worker.py``: a SIGBUS is a failed test, not a dead
run), with the thread switch interval at its minimum and a recycler thread reopening other files
all the time, so a descriptor closed under a reader is reused at once. Before descriptors were
borrowed for the length of each read, 300 rounds gave wrong values and "Bad file descriptor".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tf2flax
import tf_writers
from tf2flax.errors import StorageError

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def race_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("close_race")
    prefix = tf_writers.write_raw_bundle(d / "ckpt", {"t": np.arange(1 << 16, dtype=np.float32)})
    decoys = d / "decoys"
    decoys.mkdir()
    for i in range(8):   # other bytes than the checkpoint's, long and short
        (decoys / f"d{i}").write_bytes(b"\xff" * (1 << 20) if i % 2 else b"\x01" * 100)
    return prefix, decoys


@pytest.mark.parametrize("mmap", [False, True], ids=["preadv", "mmap"])
def test_reads_racing_close_get_the_values_or_our_error(race_files, mmap):
    prefix, decoys = race_files
    run = subprocess.run([sys.executable, str(HERE / "close_race_worker.py"), prefix, str(decoys),
                          "1" if mmap else "0", "300"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])})
    assert run.returncode == 0, f"died with status {run.returncode}: {run.stderr[-2000:]}"
    counts = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT"))[len("RESULT"):])
    assert counts["wrong"] == 0 and counts["other"] == [], counts
    assert counts["good"] > 0 and counts["closed"] > 0, counts   # both sides of the race were seen


def test_a_read_after_close_says_the_checkpoint_is_closed(race_files):
    prefix, _ = race_files
    for mmap in (False, True):
        ckpt = tf2flax.open_checkpoint(prefix, mmap=mmap)
        held = ckpt.read("t")
        ckpt.close()
        with pytest.raises(StorageError, match=r"ckpt\.data-00000-of-00001: the checkpoint is closed"):
            ckpt.read("t", (slice(0, 4),))
        assert held[5] == 5.0   # arrays read before close stay valid (a view keeps its mapping)
        ckpt.close()   # closing twice is harmless
