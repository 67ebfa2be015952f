"""One float32 tensor of 1 GiB or more, written by TensorFlow, read back with its CRC32C verified.

A tensor that large is checksummed in pieces of 512 MiB or more on a 2-core machine (one piece per
core), joined with ``crc32c_combine``: the case a 32-entry combine table got wrong, so TensorFlow's
file was refused as corrupt. Writes ``tf.Variable`` of ``--gib`` GiB with ``tf.train.Checkpoint``
into a temporary directory (deleted at the end), then prints the time of a CRC-verified
``tf2flax`` read (page cache warm, best of ``--repeats``), of TensorFlow's
``load_checkpoint().get_tensor``, their ratio, and the versions.

Usage: python benchmarks/big_tensor.py [--gib 1.0] [--repeats 2]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from versions import versions  # noqa: E402

import tf2flax  # noqa: E402


def best(repeats: int, fn) -> tuple[float, object]:
    """The fastest of ``repeats`` runs of ``fn()`` (seconds) and the last result."""
    fastest, result = float("inf"), None
    for _ in range(repeats):
        result = None
        gc.collect()
        began = time.perf_counter()
        result = fn()
        fastest = min(fastest, time.perf_counter() - began)
    return fastest, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="tensor size in GiB (default 1.0)")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many reads (default 2)")
    args = parser.parse_args(argv)
    import tensorflow as tf

    rows = int(args.gib * 2**30) // (4 * 1024)
    with tempfile.TemporaryDirectory(prefix="tf2flax-big-tensor-") as directory:
        began = time.perf_counter()
        value = tf.random.stateless_uniform((rows, 1024), seed=(1, 2), dtype=tf.float32)
        prefix = tf.train.Checkpoint(big=tf.Variable(value)).write(os.path.join(directory, "big"))
        del value
        name = "big/.ATTRIBUTES/VARIABLE_VALUE"
        print(f"wrote a [{rows}, 1024] float32 tensor ({rows * 4096 / 2**30:.2f} GiB) in "
              f"{time.perf_counter() - began:.1f} s")

        def ours():
            with tf2flax.open_checkpoint(prefix) as ckpt:   # verify_checksums=True by default
                return float(ckpt.read(name)[-1, -1])

        def theirs():
            return float(tf.train.load_checkpoint(prefix).get_tensor(name)[-1, -1])

        ours()   # warms the page cache; raised CorruptCheckpointError before the combine fix
        ours_s, ours_last = best(args.repeats, ours)
        tf_s, tf_last = best(args.repeats, theirs)
        assert ours_last == tf_last, (ours_last, tf_last)
        gb = rows * 4096 / 1e9
        print(f"tf2flax read, CRC32C verified: {ours_s:.3f} s ({gb / ours_s:.2f} GB/s)")
        print(f"TensorFlow load_checkpoint().get_tensor: {tf_s:.3f} s ({gb / tf_s:.2f} GB/s)")
        print(f"ratio tf2flax/TF throughput: {tf_s / ours_s:.2f}x; {versions()}")


if __name__ == "__main__":
    main()
