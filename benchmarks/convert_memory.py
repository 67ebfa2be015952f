"""Convert to Orbax: time and peak memory, tf2flax vs TensorFlow's reader + Orbax StandardCheckpointer.

Writes a 1.2 GB TF2 checkpoint with TensorFlow (``--size-gb``), then runs each method in a child
process of its own (so that neither's memory shows in the other's peak), ``--repeats`` times taking
turns, and prints one table with the ratios against the anchors and the library versions:

- tf2flax: ``tf2flax.convert(ckpt, out)`` (streams groups of tensors through ``ocp.v1.partial.save``);
- tf+orbax: ``tf.train.load_checkpoint`` reads every tensor, then ``ocp.StandardCheckpointer().save``
  writes the whole tree (the usual glue);
- cp: ``cp -r`` of the checkpoint directory, then ``sync`` (the disk's speed for these bytes).

Every method's time includes a ``sync`` after it (Orbax, through tensorstore, syncs its files itself).
Goals (issue 13): tf2flax >= 2x tf+orbax and >= 0.5x cp + sync.

Peak memory is the child's high-water RSS (``VmHWM``, see ``memory.py``: everything, interpreter,
imports and data); "after imports" is its RSS before any tensor is read. Both outputs are then restored with ``ocp.v1.load`` in a third
process and compared tensor by tensor. The goal for tf2flax: peak <= 0.5 x checkpoint size + 0.5 GB.

Everything written is deleted at the end unless ``--keep``.

Usage: python benchmarks/convert_memory.py [--size-gb 1.2] [--repeats 2] [--dir /tmp/tf2flax-bench-convert] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from memory import peak_rss, rss
from versions import versions

N_VARS = 16


def write_checkpoint(directory: Path, size_gb: float) -> str:
    """A TF2 checkpoint of N_VARS float32 [rows, 4096] variables, ``size_gb`` GB in all (reused if present)."""
    prefix = directory / f"ckpt-{size_gb:g}gb"
    if Path(str(prefix) + ".index").exists():
        return str(prefix)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    directory.mkdir(parents=True, exist_ok=True)
    rows = int(size_gb * 1e9 / N_VARS / 4 / 4096) + 1
    rng = np.random.default_rng(0)
    variables = {f"layer_{i:02d}": tf.Variable(rng.standard_normal((rows, 4096), dtype=np.float32))
                 for i in range(N_VARS)}
    return tf.train.Checkpoint(**variables).write(str(prefix))


def child(method: str, prefix: str, out: str) -> None:
    """Run one method and print ``{"seconds", "peak", "after_imports"}`` as JSON on stdout."""
    if method == "tf2flax":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import orbax.checkpoint  # noqa: F401  (imported up front by both methods)

        import tf2flax

        imported = rss()
        began = time.perf_counter()
        tf2flax.convert(prefix, out)
    elif method == "cp":
        imported = rss()
        began = time.perf_counter()
        subprocess.run(["cp", "-r", str(Path(prefix).parent), out], check=True)
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import orbax.checkpoint as ocp
        import tensorflow as tf

        imported = rss()
        began = time.perf_counter()
        reader = tf.train.load_checkpoint(prefix)
        tree: dict = {}
        for name in sorted(reader.get_variable_to_shape_map()):
            if name == "_CHECKPOINTABLE_OBJECT_GRAPH":
                continue
            node = tree
            *scopes, leaf = name.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE").split("/")
            for s in scopes:
                node = node.setdefault(s, {})
            node[leaf] = reader.get_tensor(name)
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(out, tree)
        checkpointer.wait_until_finished()
    os.sync()  # every method's bytes on disk before the clock stops
    seconds = time.perf_counter() - began
    peak = peak_rss()
    print(json.dumps({"seconds": seconds, "peak": peak, "after_imports": imported}))


def verify(a: str, b: str) -> None:
    """Restore both outputs with Orbax alone and compare every tensor (prints 'same' or raises)."""
    import numpy as np
    import orbax.checkpoint as ocp

    x, y = ocp.v1.load(a), ocp.v1.load(b)
    assert sorted(x) == sorted(y), (sorted(x), sorted(y))
    for k in x:
        assert np.array_equal(x[k], y[k]), k
    print("same")


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{args[:2]} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.2)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs of each method")
    parser.add_argument("--dir", default="/tmp/tf2flax-bench-convert")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint for the next run")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "PREFIX", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--verify", nargs=2, metavar=("A", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.verify:
        return verify(*args.verify)

    directory = Path(args.dir)
    try:
        run(directory, args.size_gb, args.repeats)
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


def run(directory: Path, size_gb: float, repeats: int) -> None:
    prefix = write_checkpoint(directory / "ckpt", size_gb)
    size = sum(p.stat().st_size for p in (directory / "ckpt").glob(Path(prefix).name + ".data-*"))
    results: dict[str, dict] = {}
    for _ in range(repeats):  # methods take turns, so load from elsewhere hits them alike
        for method in ("tf2flax", "tf+orbax", "cp"):
            out = directory / f"out-{method}"
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(["sync"], check=True)
            r = json.loads(_run("--child", method, prefix, str(out)))
            best = results.get(method)
            results[method] = r if best is None else {**r, "seconds": min(r["seconds"], best["seconds"]),
                                                       "peak": max(r["peak"], best["peak"])}
    same = _run("--verify", str(directory / "out-tf2flax"), str(directory / "out-tf+orbax"))
    limit = 0.5 * size + 0.5e9
    print(versions())
    print(f"checkpoint: {size / 1e9:.2f} GB in {N_VARS} float32 tensors ({prefix}); "
          f"outputs restored with ocp.v1.load and compared: {same}; best of {repeats}")
    print(f"goal: peak <= 0.5 x size + 0.5 GB = {limit / 1e9:.2f} GB\n")
    ours = results["tf2flax"]["seconds"]
    print("| method | time incl. sync (s) | GB/s | tf2flax speed / this | peak RSS (GB) | peak / ckpt size | "
          "RSS after imports (GB) |")
    print("|---|---|---|---|---|---|---|")
    for method, r in results.items():
        print(f"| {method} | {r['seconds']:.2f} | {size / 1e9 / r['seconds']:.2f} | {r['seconds'] / ours:.2f}x | "
              f"{r['peak'] / 1e9:.2f} | {r['peak'] / size:.2f}x | {r['after_imports'] / 1e9:.2f} |")
    print(f"\nratios: tf2flax / (tf+orbax) = {results['tf+orbax']['seconds'] / ours:.2f}x (goal >= 2), "
          f"tf2flax / (cp -r + sync) = {results['cp']['seconds'] / ours:.2f}x (goal >= 0.5), "
          f"tf2flax peak {'within' if results['tf2flax']['peak'] <= limit else 'OVER'} the memory goal")


if __name__ == "__main__":
    main()
