"""Sharded restore: per-process memory growth and bytes read, tf2flax vs the naive way.

Writes a >= 1 GB checkpoint with TensorFlow, then, for each method, starts two JAX processes
(``jax.distributed`` on 127.0.0.1, 4 CPU devices each, a (4, 2) mesh) that restore every tensor
fully sharded, and prints one table:

- tf2flax: ``tf2flax.init_params`` (each process reads only its devices' regions);
- naive: TensorFlow's ``CheckpointReader`` reads the whole checkpoint in every process, then
  ``jax.make_array_from_callback`` keeps this process's shards (what T5X's importer does).

Usage: python benchmarks/sharded_restore.py [--size-gb 1.0] [--dir /tmp/tf2flax-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memory import peak_rss, rss

N_VARS = 16


def write_checkpoint(directory: Path, size_gb: float) -> str:
    """A TF2 checkpoint of N_VARS float32 [rows, 4096] variables, ``size_gb`` in all (reused if present)."""
    prefix = directory / "ckpt-1"
    if Path(str(prefix) + ".index").exists():
        return str(prefix)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    rows = int(size_gb * 1e9 / N_VARS / 4 / 4096) // 8 * 8
    rng = np.random.default_rng(0)
    variables = {f"layer_{i}": tf.Variable(rng.standard_normal((rows, 4096), dtype=np.float32)) for i in range(N_VARS)}
    return tf.train.Checkpoint(**variables).write(str(prefix))


def worker(method: str, process_id: int, port: int, prefix: str, out: str) -> None:
    """One of the two processes of one method; writes its measurements as JSON to ``out``."""
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax

    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    import tf2flax

    if method == "naive":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf
    ckpt = tf2flax.open_checkpoint(prefix)
    names = [n for n in ckpt.names if n.startswith("layer_")]
    mesh = jax.make_mesh((4, 2), ("x", "y"))
    sharding = NamedSharding(mesh, P("x", "y"))
    baseline = rss()
    began = time.perf_counter()
    if method == "tf2flax":
        abstract = {n.split("/")[0]: jax.ShapeDtypeStruct(ckpt.shape(n), np.float32, sharding=sharding) for n in names}
        mapping = {n: n.split("/")[0] for n in names}
        params, result = tf2flax.init_params(ckpt, mapping, abstract, return_report=True)
        bytes_read = result.stats.bytes_read
    else:
        reader = tf.train.load_checkpoint(prefix)
        full = {n: reader.get_tensor(n) for n in names}
        bytes_read = sum(v.nbytes for v in full.values())
        params = {n: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx]) for n, v in full.items()}
        del full
    jax.block_until_ready(params)
    seconds = time.perf_counter() - began
    peak = peak_rss()
    Path(out).write_text(json.dumps({"growth": peak - baseline, "bytes_read": bytes_read, "seconds": seconds}))
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_method(method: str, prefix: str, tmp: Path) -> list[dict]:
    port = _free_port()
    outs = [tmp / f"{method}_{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", method, str(i), str(port), prefix, str(outs[i])])
             for i in range(2)]
    for p in procs:
        if p.wait(timeout=900) != 0:
            raise SystemExit(f"{method} worker failed with exit code {p.returncode}")
    return [json.loads(o.read_text()) for o in outs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "tf2flax-bench-sharded"))
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, pid, port, prefix, out = args.worker
        worker(method, int(pid), int(port), prefix, out)
        return
    from rich.console import Console
    from rich.table import Table

    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    prefix = write_checkpoint(directory, args.size_gb)
    size = sum(f.stat().st_size for f in directory.glob("ckpt-1.data-*"))
    table = Table(title=f"Sharded restore, 2 processes x 4 CPU devices, (4, 2) mesh, checkpoint {size / 1e9:.2f} GB")
    for column in ("method", "process", "peak RSS growth (GB)", "growth / ckpt", "bytes read (GB)", "read / ckpt", "seconds"):
        table.add_column(column, justify="right" if column != "method" else "left")
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("tf2flax", "naive"):
            for i, r in enumerate(run_method(method, prefix, Path(tmp))):
                table.add_row(method, str(i), f"{r['growth'] / 1e9:.2f}", f"{r['growth'] / size:.2f}x",
                              f"{r['bytes_read'] / 1e9:.2f}", f"{r['bytes_read'] / size:.2f}x", f"{r['seconds']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
