"""Distributed convert: 2 processes x 4 CPU devices (``jax.distributed`` on 127.0.0.1) vs one process.

Writes a >= 1 GB TF2 checkpoint with TensorFlow (reused if present), then in the same run:

- one process: ``tf2flax.convert(ckpt, out)``;
- two processes: each ``tf2flax.convert(ckpt, out, distributed=True)`` in a ``jax.distributed``
  program of 2 processes x 4 CPU devices (the default placement: each large tensor split along its
  first axis over the 8 devices).

For every process: wall time of the convert call, bytes it read from the checkpoint, and its peak
memory (``VmHWM``, see ``memory.py``: interpreter, imports and data). Both outputs are then restored
with ``ocp.v1.load`` in another process and compared tensor by tensor.

Usage: python benchmarks/distributed_convert.py [--size-gb 1.0] [--dir /tmp/tf2flax-bench-dist]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from convert_memory import verify, write_checkpoint
from memory import peak_rss
from versions import versions


def child(process: int, port: int, prefix: str, out: str) -> None:
    """One convert (``process`` -1: alone; else one process of two); prints its numbers as JSON."""
    import jax

    if process >= 0:
        jax.distributed.initialize(f"127.0.0.1:{port}", 2, process)
    import tf2flax

    began = time.perf_counter()
    result = tf2flax.convert(prefix, out, distributed=process >= 0)
    seconds = time.perf_counter() - began
    print(json.dumps({"seconds": seconds, "bytes_read": result.bytes_read, "peak": peak_rss(),
                      "bytes": result.bytes}))
    if process >= 0:
        jax.distributed.shutdown()


def _spawn(args: list[str], devices: int) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen([sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"a child failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--dir", default="/tmp/tf2flax-bench-dist")
    parser.add_argument("--child", nargs=4, metavar=("PROCESS", "PORT", "PREFIX", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--verify", nargs=2, metavar=("A", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(int(args.child[0]), int(args.child[1]), *args.child[2:])
    if args.verify:
        return verify(*args.verify)

    directory = Path(args.dir)
    prefix = write_checkpoint(directory, args.size_gb)
    size = sum(p.stat().st_size for p in directory.glob(Path(prefix).name + ".data-*"))
    single, multi = directory / "out-single", directory / "out-distributed"
    for out in (single, multi):
        shutil.rmtree(out, ignore_errors=True)
    rows = [("1 process x 4 devices", _result(_spawn(["--child", "-1", "0", prefix, str(single)], 4)))]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    began = time.perf_counter()
    procs = [_spawn(["--child", str(i), port, prefix, str(multi)], 4) for i in range(2)]
    rows += [(f"2 processes: process {i}", _result(p)) for i, p in enumerate(procs)]
    wall = time.perf_counter() - began
    same = subprocess.run([sys.executable, __file__, "--verify", str(single), str(multi)],
                          capture_output=True, text=True).stdout.strip().splitlines()[-1:]
    print(f"checkpoint: {size / 1e9:.2f} GB ({prefix}); {versions()}; outputs restored with ocp.v1.load "
          f"and compared: {same[0] if same else 'FAILED'}")
    print(f"two-process wall time (start of both to end of both, imports included): {wall:.1f} s\n")
    print("| run | convert time (s) | read (GB) | read / ckpt | peak memory VmHWM (GB) |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['seconds']:.1f} | {r['bytes_read'] / 1e9:.2f} | {r['bytes_read'] / size:.2f}x | "
              f"{r['peak'] / 1e9:.2f} |")


if __name__ == "__main__":
    main()
