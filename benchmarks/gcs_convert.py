"""Convert to ``gs://`` vs to a local directory: time and peak memory of the converting process.

Writes a TF2 checkpoint with TensorFlow (reused if present), starts the tests' writable fake GCS
(gcp-storage-emulator, ``tests/gcs_emulator.py``) in a process of its own, then in the same run:

- ``tf2flax.convert(ckpt, local_dir)``: the anchor (Orbax's streamed partial save, 4 groups);
- ``tf2flax.convert(ckpt, "gs://bench/out")``: one Orbax save, in place, commit file last;
- the same two with ``dtype="bfloat16"``: every tensor is then a new array held in memory until
  written to gs://, where the local convert holds two groups at most.

Each convert runs in a fresh process; its peak memory is ``VmHWM`` (see ``memory.py``). The gs://
outputs are restored with ``ocp.v1.load`` and compared with the local ones. The emulator is one
single-threaded Python server, so gs:// times measure it more than tf2flax or GCS; peak memory is
the number that carries over.

Usage: python benchmarks/gcs_convert.py [--size-gb 0.5] [--dir /tmp/tf2flax-bench-gcs]
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

from convert_memory import verify, write_checkpoint
from memory import peak_rss
from versions import versions

TESTS = Path(__file__).resolve().parent.parent / "tests"
SERVE = ("import sys, time; sys.path.insert(0, sys.argv[1]); from gcs_emulator import GcsEmulator; "
         "g = GcsEmulator('bench'); print(g.url, flush=True); time.sleep(1e9)")
ENV_OF = ("import sys; sys.path.insert(0, sys.argv[1]); from gcs_emulator import GcsEmulator; import json; "
          "print(json.dumps(GcsEmulator.env_for(sys.argv[2])))")


def child(prefix: str, out: str, dtype: str) -> None:
    """One convert; prints its numbers as JSON."""
    import tf2flax

    began = time.perf_counter()
    result = tf2flax.convert(prefix, out, dtype=dtype or None)
    print(json.dumps({"seconds": time.perf_counter() - began, "peak": peak_rss(), "bytes": result.bytes}))


def _run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, __file__, *args], env={**os.environ, **env}, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"a child failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=0.5)
    parser.add_argument("--dir", default="/tmp/tf2flax-bench-gcs")
    parser.add_argument("--child", nargs=3, metavar=("PREFIX", "OUT", "DTYPE"), help=argparse.SUPPRESS)
    parser.add_argument("--verify", nargs=2, metavar=("A", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.verify:
        return verify(*args.verify)

    directory = Path(args.dir)
    prefix = write_checkpoint(directory, args.size_gb)
    size = sum(p.stat().st_size for p in directory.glob(Path(prefix).name + ".data-*"))
    server = subprocess.Popen([sys.executable, "-c", SERVE, str(TESTS)], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        env = json.loads(subprocess.run([sys.executable, "-c", ENV_OF, str(TESTS), url], capture_output=True,
                                        text=True, check=True).stdout)
        rows = []
        for dtype in ("", "bfloat16"):
            local = directory / f"out-local{dtype}"
            shutil.rmtree(local, ignore_errors=True)
            remote = f"gs://bench/out{dtype}"
            rows.append((f"local directory{', bfloat16' if dtype else ''}",
                         json.loads(_run(["--child", prefix, str(local), dtype], {}))))
            rows.append((f"gs:// (fake GCS){', bfloat16' if dtype else ''}",
                         json.loads(_run(["--child", prefix, remote, dtype], env))))
            rows[-1][1]["same"] = _run(["--verify", str(local), remote], env)
    finally:
        server.kill()
    print(f"checkpoint: {size / 1e9:.2f} GB ({prefix}); {versions()}")
    print("| output | convert time (s) | peak memory VmHWM (GB) | peak / checkpoint | restored = local |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['seconds']:.1f} | {r['peak'] / 1e9:.2f} | {r['peak'] / size:.2f}x | "
              f"{r.get('same', '-')} |")


if __name__ == "__main__":
    main()
