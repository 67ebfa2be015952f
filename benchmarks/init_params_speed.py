"""``init_params`` on one host, 8 CPU devices, every leaf fully sharded: tf2flax vs TensorFlow + device_put.

Writes a TF2 checkpoint of 16 float32 [rows, 1024] variables (``--size-gb`` GiB in all, default
1.125 GiB = 1.2 GB, whose rows the mesh divides) with TensorFlow, then in this one process (8 CPU
devices, a (4, 2) mesh, ``P("x", "y")`` on every leaf, so each device's block is a strided
region), best of ``--repeats``, methods alternating, page cache warm:

- tf2flax: ``tf2flax.init_params(prefix, mapping, abstract)`` (CRC32C verified);
- anchor: ``tf.train.load_checkpoint(prefix).get_tensor(name)`` + ``jax.device_put(value, sharding)``.

Both results are compared element by element once. Goal: tf2flax >= 1.5x the anchor.
The checkpoint is deleted at the end unless ``--keep``.

Usage: python benchmarks/init_params_speed.py [--size-gb 1.125] [--repeats 3] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from versions import versions  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.125,
                        help="checkpoint size in GiB (default 1.125: 1.2 GB, rows divisible by the mesh)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the checkpoint (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the checkpoint")
    args = parser.parse_args(argv)

    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    import tf2flax
    import tf_writers

    tf = tf_writers.tf()
    directory = args.dir or Path(tempfile.gettempdir()) / "tf2flax-bench-init-params"
    try:
        prefix = tf_writers.write_large(directory / f"large-{args.size_gb:g}", args.size_gb)
        ckpt = tf2flax.open_checkpoint(prefix)
        names = [n for n in ckpt.names if n.startswith("v")]
        nbytes = sum(ckpt.info(n).nbytes for n in names)
        ckpt.close()
        mesh = jax.make_mesh((4, 2), ("x", "y"))
        sharding = NamedSharding(mesh, P("x", "y"))
        abstract = {n.split("/")[0]: jax.ShapeDtypeStruct(tuple(tf_writers.tf().train.load_checkpoint(prefix)
                                                               .get_variable_to_shape_map()[n]), np.float32,
                                                         sharding=sharding) for n in names}
        mapping = {n: n.split("/")[0] for n in names}

        def ours():
            return tf2flax.init_params(prefix, mapping, abstract, progress=False)

        def anchor():
            reader = tf.train.load_checkpoint(prefix)
            return {n.split("/")[0]: jax.device_put(reader.get_tensor(n), sharding) for n in names}

        got, want = ours(), anchor()
        for key in want:
            assert np.array_equal(np.asarray(got[key]), np.asarray(want[key])), key
            assert got[key].sharding == want[key].sharding, key
        del got, want
        best = {"tf2flax": float("inf"), "anchor": float("inf")}
        for _ in range(args.repeats):
            for label, fn in (("tf2flax", ours), ("anchor", anchor)):
                gc.collect()
                began = time.perf_counter()
                jax.block_until_ready(fn())
                best[label] = min(best[label], time.perf_counter() - began)
                gc.collect()
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    ratio = best["anchor"] / best["tf2flax"]
    print(versions())
    print(f"init_params, {len(names)} leaves, {nbytes / 1e9:.2f} GB, 8 CPU devices, P('x', 'y') on a (4, 2) mesh, "
          f"best of {args.repeats}")
    print(f"  tf2flax.init_params                 {best['tf2flax']:.3f} s  {nbytes / best['tf2flax'] / 1e9:.2f} GB/s")
    print(f"  TF get_tensor + jax.device_put      {best['anchor']:.3f} s  {nbytes / best['anchor'] / 1e9:.2f} GB/s")
    print(f"  ratio: tf2flax is {ratio:.2f}x the anchor (goal >= 1.5x)")
    return ratio


if __name__ == "__main__":
    main()
