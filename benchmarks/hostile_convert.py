"""Hostile small inputs to ``tf2flax convert``: peak memory, time and outcome of each (issue 12).

Each case runs ``python -m tf2flax convert ...`` in a subprocess; a thread samples the child's RSS
(psutil) every 5 ms and kills it above ``--kill-mb``, so that a case that would take gigabytes
reports "killed" instead of taking the machine down. The anchor is a dry run of a small valid
checkpoint, measured in the same run: "extra" is the peak minus the anchor's peak.

Cases: a tensor name of 200 KB (100,000 '/'), the same with a rules map; a 354-byte YAML map of
alias references; maps nested 100,000 deep (YAML flow and block, JSON); ``rules: 5``; ``part_axis: "x"``.

Usage: python benchmarks/hostile_convert.py [--dir /tmp/tf2flax-hostile] [--kill-mb 3000]
(writes its checkpoints with TensorFlow, as the tests do).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import tf_writers  # noqa: E402


def alias_bomb() -> str:
    """About 390 bytes of YAML whose map entry ``a`` is 9**9 strings when walked (printing it: 2 GB)."""
    lines = ["map:", "  z1: &1 [x, x, x, x, x, x, x, x, x]"]
    for n in range(2, 10):
        lines.append(f"  z{n}: &{n} [" + ",".join([f"*{n - 1}"] * 9) + "]")
    lines.append("  a: *9")
    return "\n".join(lines) + "\n"


def run(argv: list[str], kill_mb: int, env: dict) -> dict:
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tf2flax", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    child = psutil.Process(proc.pid)
    peak, killed = [0], [False]

    def sample() -> None:
        while proc.poll() is None:
            try:
                rss = child.memory_info().rss
            except psutil.Error:
                return
            peak[0] = max(peak[0], rss)
            if rss > kill_mb << 20:
                killed[0] = True
                proc.kill()
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, err = proc.communicate(timeout=600)
    watcher.join()
    first = err.decode("utf-8", "replace").strip().splitlines()
    return {"rc": proc.returncode, "seconds": time.perf_counter() - began, "peak_mb": peak[0] / 2**20,
            "killed": killed[0], "stderr_bytes": len(err), "message": first[-1][:160] if first else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/tf2flax-hostile")
    parser.add_argument("--kill-mb", type=int, default=3000)
    parser.add_argument("--only", default="", help="run the anchor and the cases whose label contains this")
    args = parser.parse_args()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    small = tf_writers.write_raw_bundle(work / "small" / "model", {"dense/kernel": np.ones((4, 8), np.float32)})
    long_name = "a/" * 99999 + "a"
    longck = tf_writers.write_raw_bundle(work / "long" / "model", {long_name: np.ones(2, np.float32),
                                                                    "ok": np.ones(1, np.float32)})
    maps = {
        "rules.yaml": 'rules: [["^ok$", "fine"]]\n',
        "alias.yaml": alias_bomb(),
        "deep.yaml": "map: " + "[" * 100000 + "]" * 100000 + "\n",
        "deep.json": '{"map": ' + "[" * 100000 + "]" * 100000 + "}\n",
        "deep_block.yaml": "map:\n  " + "- " * 100000 + "x\n",
        "rules5.yaml": "rules: 5\n",
        "part_axis.yaml": 'part_axis: "x"\nmap: {"dense/": "params/"}\n',
    }
    for name, text in maps.items():
        (work / name).write_text(text)
    out = str(work / "out")
    cases = [
        ("anchor: small checkpoint, dry run", [small, out, "--dry-run"]),
        ("200 KB tensor name, dry run", [longck, out, "--dry-run"]),
        ("200 KB tensor name, rules map, dry run", [longck, out, "--dry-run", "--map", str(work / "rules.yaml")]),
        (f"{len(maps['alias.yaml'])}-byte YAML alias map", [small, out, "--dry-run", "--map", str(work / "alias.yaml")]),
        ("YAML map nested 100,000 deep", [small, out, "--dry-run", "--map", str(work / "deep.yaml")]),
        ("JSON map nested 100,000 deep", [small, out, "--dry-run", "--map", str(work / "deep.json")]),
        ("YAML block sequence 100,000 deep", [small, out, "--dry-run", "--map", str(work / "deep_block.yaml")]),
        ("rules: 5", [small, out, "--dry-run", "--map", str(work / "rules5.yaml")]),
        ('part_axis: "x"', [small, out, "--dry-run", "--map", str(work / "part_axis.yaml")]),
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    import jax
    import orbax.checkpoint as ocp

    print(f"python {sys.version.split()[0]}, jax {jax.__version__}, orbax-checkpoint {ocp.__version__}, "
          f"numpy {np.__version__}, psutil {psutil.__version__}")
    anchor = None
    for label, argv in cases:
        if anchor is not None and args.only not in label:
            continue
        r = run(["convert", *argv], args.kill_mb, env)
        anchor = anchor if anchor is not None else r["peak_mb"]
        state = f"killed at > {args.kill_mb} MB" if r["killed"] else f"exit {r['rc']}"
        print(f"{label:42s} {state:22s} {r['seconds']:6.2f} s  peak {r['peak_mb']:7.0f} MB "
              f"(+{r['peak_mb'] - anchor:6.0f} MB)  stderr {r['stderr_bytes']} B: {r['message']}")


if __name__ == "__main__":
    main()
