"""Start-up: ``python -m tf2flax ls examples/bert_tiny`` against ``python -c "import numpy"``.

Every run is a fresh interpreter. The commands alternate, round after round (numpy, ``import
tf2flax``, ``ls``, numpy, ...), after one warm-up round (page cache and bytecode warm), so a busy
spell on the machine slows all of them alike; each figure is the median of its rounds, and the ratio
is the median of the per-round ratios. Goal: ``ls`` <= 2x ``import numpy``.

Usage: python benchmarks/startup.py [--rounds 15] [--ckpt examples/bert_tiny]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from versions import versions

REPO = Path(__file__).resolve().parent.parent


def seconds(cmd: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ckpt", default=str(REPO / "examples" / "bert_tiny"))
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    commands = {"numpy": [sys.executable, "-c", "import numpy"],
                "import": [sys.executable, "-c", "import tf2flax"],
                "ls": [sys.executable, "-m", "tf2flax", "ls", args.ckpt]}
    for cmd in commands.values():
        seconds(cmd, env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, cmd in commands.items():
            times[name].append(seconds(cmd, env))
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = {name: statistics.median(t / n for t, n in zip(times[name], times["numpy"])) for name in ("import", "ls")}
    print(versions())
    print(f"{args.rounds} alternating rounds, medians")
    print(f"python -c 'import numpy'          {median['numpy'] * 1e3:7.0f} ms")
    print(f"python -c 'import tf2flax'        {median['import'] * 1e3:7.0f} ms  ({ratio['import']:.2f}x import numpy)")
    print(f"python -m tf2flax ls {Path(args.ckpt).name:<12} {median['ls'] * 1e3:7.0f} ms  "
          f"({ratio['ls']:.2f}x import numpy; goal <= 2x)")
    return ratio["ls"]


if __name__ == "__main__":
    main()
