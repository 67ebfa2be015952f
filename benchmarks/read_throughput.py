"""Read throughput of the checkpoint reader: tf2flax vs TensorFlow vs raw file reads.

Writes a TF2 checkpoint of 16 float32 variables, ``--size-gb`` GiB in all (1.125 GiB = 1.2 GB by
default), and a 6000-variable checkpoint; both are deleted at the end unless ``--keep`` (then
reused by the next run). Then, in this one process, with the page cache warmed by a first pass,
prints best-of-N timings and the ratios against the anchors, with the library versions:

- tf2flax: ``open_checkpoint(prefix)`` + ``read(name)`` of every tensor, CRC32C verified (default):
  read-only views of the mapped files, the checksum computed over them on every core;
- tf2flax with ``mmap=False``: every tensor read into memory of its own (``preadv``), CRC32C verified;
- tf2flax with ``verify_checksums=False`` (views: nothing is touched, an upper bound);
- TensorFlow: ``tf.train.load_checkpoint(prefix).get_tensor(name)`` of every tensor (TF verifies CRCs);
- raw: ``np.fromfile`` of each data file (an upper bound: no parsing, no CRC);
- open + ``list_variables`` of the 6000-variable checkpoint: tf2flax vs ``tf.train.list_variables``.

Goals (issue 13): CRC-verified read >= 1.5x TensorFlow's reader and >= 1.0x ``np.fromfile``.

Usage: python benchmarks/read_throughput.py [--size-gb 1.125] [--dir /tmp/tf2flax-bench/read_throughput]
       [--repeats 3] [--many 6000] [--keep]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import tf_writers  # noqa: E402  (the TF-backed writers shared with the test suite)
from versions import versions  # noqa: E402

import tf2flax  # noqa: E402


def best_of(repeats: int, fn) -> tuple[float, object]:
    """The fastest of ``repeats`` runs of ``fn()`` (seconds) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        result = None
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def data_files(prefix: str) -> list[Path]:
    p = Path(prefix)
    return sorted(f for f in p.parent.iterdir() if f.name.startswith(p.name + ".data-"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.125, help="checkpoint size in GiB (default 1.125 = 1.2 GB)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/tf2flax-bench/read_throughput"),
                        help="where the checkpoints are written (reused when present)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (default 3)")
    parser.add_argument("--many", type=int, default=6000, help="variables in the listing benchmark")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints for the next run")
    args = parser.parse_args(argv)
    try:
        run(args)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


def run(args: argparse.Namespace) -> None:

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 110)
    tf = tf_writers.tf()

    t0 = time.perf_counter()
    prefix = tf_writers.write_large(args.dir / f"large-{args.size_gb:g}", args.size_gb)
    many_dir = args.dir / f"many-{args.many}"
    many_prefix = str(many_dir / "many")
    if not Path(many_prefix + ".index").exists():
        tf_writers.write_many(many_dir, args.many)
    console.print(f"checkpoints ready in {time.perf_counter() - t0:.1f} s: {prefix}, {many_prefix}")

    files = data_files(prefix)
    total_bytes = sum(f.stat().st_size for f in files)
    names = tf2flax.open_checkpoint(prefix).names
    ckpt = tf2flax.open_checkpoint(prefix)
    tensor_bytes = sum(int(np.prod(ckpt.shape(n))) * ckpt.dtype(n).itemsize
                       for n in names if ckpt.dtype(n) != object)
    del ckpt

    def raw_read():
        return sum(np.fromfile(f, dtype=np.uint8).nbytes for f in files)

    def tf2flax_read(verify: bool, mmap: bool = True):
        def run():
            n = 0
            with tf2flax.open_checkpoint(prefix, verify_checksums=verify, mmap=mmap) as c:
                for name in c.names:
                    n += c.read(name).nbytes
            return n
        return run

    def tf_read():
        reader = tf.train.load_checkpoint(prefix)
        n = 0
        for name in reader.get_variable_to_shape_map():
            n += np.asarray(reader.get_tensor(name)).nbytes
        return n

    # Warm the page cache (and every code path) once before timing anything.
    raw_read()
    tf2flax_read(True)()

    methods = [
        ("raw np.fromfile of the data files", raw_read, total_bytes),
        ("tf2flax read, CRC32C verified", tf2flax_read(True), tensor_bytes),
        ("tf2flax read, mmap=False, CRC32C verified", tf2flax_read(True, mmap=False), tensor_bytes),
        ("tf2flax read, verify_checksums=False", tf2flax_read(False), tensor_bytes),
        ("TensorFlow load_checkpoint().get_tensor", tf_read, tensor_bytes),
    ]
    best = {label: float("inf") for label, _, _ in methods}
    for _ in range(args.repeats):  # methods take turns, so load from elsewhere hits them alike
        for label, fn, nbytes in methods:
            gc.collect()
            began = time.perf_counter()
            got = fn()
            best[label] = min(best[label], time.perf_counter() - began)
            assert got >= nbytes * 0.99, (label, got, nbytes)
    rows = [(label, best[label], nbytes / best[label] / 1e9) for label, _, nbytes in methods]

    by = {label: gbps for label, _, gbps in rows}
    ours = by["tf2flax read, CRC32C verified"]
    table = Table(title=f"Full read of a {total_bytes / 1e9:.2f} GB checkpoint "
                        f"({len(names)} tensors, page cache warm, best of {args.repeats})")
    table.add_column("method")
    table.add_column("seconds", justify="right")
    table.add_column("GB/s", justify="right")
    table.add_column("tf2flax (CRC on) / this", justify="right")
    for label, seconds, gbps in rows:
        table.add_row(label, f"{seconds:.3f}", f"{gbps:.2f}", f"{ours / gbps:.2f}x")
    console.print(table)

    # Open + list_variables of a checkpoint with many variables.
    def ours_list():
        return tf2flax.open_checkpoint(many_prefix).list_variables()

    def tf_list():
        return tf.train.list_variables(many_prefix)

    ours_list(), tf_list()
    ours_s, ours_vars = best_of(max(args.repeats, 5), ours_list)
    tf_s, tf_vars = best_of(max(args.repeats, 5), tf_list)
    assert [n for n, _ in ours_vars] == [n for n, _ in tf_vars]
    listing = Table(title=f"open + list_variables: {args.many} variables, "
                          f"{os.path.getsize(many_prefix + '.index') / 1e3:.0f} kB index")
    listing.add_column("method")
    listing.add_column(f"ms (best of {max(args.repeats, 5)})", justify="right")
    listing.add_row("tf2flax.open_checkpoint(p).list_variables()", f"{ours_s * 1e3:.1f}")
    listing.add_row("tf.train.list_variables(p)", f"{tf_s * 1e3:.1f}")
    console.print(listing)

    console.print(versions())
    console.print(
        f"ratios: tf2flax/TF read throughput = {ours / by['TensorFlow load_checkpoint().get_tensor']:.2f}, "
        f"tf2flax/raw = {ours / by['raw np.fromfile of the data files']:.2f} (goals >= 1.5 and >= 1.0), "
        f"tf2flax/TF list time = {ours_s / tf_s:.2f} (< 1 is faster)")


if __name__ == "__main__":
    main()
