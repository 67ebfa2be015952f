"""Start-up: ``python -m tf2flax ls examples/bert_tiny`` against ``python -c "import numpy"``.

Each command runs in a fresh interpreter, ``--repeats`` times after one warm-up run (page cache
and bytecode warm); the best time of each is compared. Goal: ``ls`` <= 2x ``import numpy``.

Usage: python benchmarks/startup.py [--repeats 10] [--ckpt examples/bert_tiny]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from versions import versions

REPO = Path(__file__).resolve().parent.parent


def best_time(cmd: list[str], repeats: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
        best = min(best, time.perf_counter() - began)
    return best


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--ckpt", default=str(REPO / "examples" / "bert_tiny"))
    args = parser.parse_args(argv)
    numpy_s = best_time([sys.executable, "-c", "import numpy"], args.repeats)
    ls_s = best_time([sys.executable, "-m", "tf2flax", "ls", args.ckpt], args.repeats)
    import_s = best_time([sys.executable, "-c", "import tf2flax"], args.repeats)
    print(versions())
    print(f"python -c 'import numpy'          {numpy_s * 1e3:7.0f} ms")
    print(f"python -c 'import tf2flax'        {import_s * 1e3:7.0f} ms  ({import_s / numpy_s:.2f}x import numpy)")
    print(f"python -m tf2flax ls {Path(args.ckpt).name:<12} {ls_s * 1e3:7.0f} ms  ({ls_s / numpy_s:.2f}x import numpy; "
          "goal <= 2x)")
    return ls_s / numpy_s


if __name__ == "__main__":
    main()
