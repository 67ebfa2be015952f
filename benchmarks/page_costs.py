"""What a fresh page costs on this machine: fill ``--size-gb`` of new 12 MiB host blocks, each way in
its own fresh process, then fill the same blocks again (reuse), with getrusage over each pass.

Ways: ``numpy`` (``np.empty``: numpy advises transparent huge pages for arrays of 4 MB or more),
``numpy-4k`` (the same with ``NUMPY_MADVISE_HUGEPAGE=0``), ``mmap-4k`` (an anonymous private
mapping per block, 4 KB pages: what ``tf2flax.hostmem.HostPool`` does), ``populate``
(``MADV_POPULATE_WRITE`` before the fill), ``huge`` (``MADV_HUGEPAGE`` per block). The block size
is a device's block of a [4096, 6144] float32 tensor on 8 devices.

Usage: python benchmarks/page_costs.py [--size-gb 1.2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import subprocess
import sys
import time

BLOCK = 1024 * 3072 * 4
WAYS = ("numpy", "numpy-4k", "mmap-4k", "populate", "huge")
MADV_POPULATE_WRITE = 23  # Linux 5.14+


def fill(way: str, size: int) -> dict:
    import numpy as np

    source = np.ones(BLOCK // 4, np.float32)
    keep = []

    def usage() -> tuple[float, float, int]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), r.ru_stime, r.ru_minflt

    out = {}
    began = usage()
    for _ in range(size // BLOCK):
        if way.startswith("numpy"):
            block = np.empty(BLOCK // 4, np.float32)
        else:
            mapped = mmap.mmap(-1, BLOCK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            if way == "huge":
                mapped.madvise(mmap.MADV_HUGEPAGE)
            if way == "populate":
                mapped.madvise(MADV_POPULATE_WRITE)
            block = np.frombuffer(mapped, np.float32)
        np.copyto(block, source)
        keep.append(block)
    fresh = usage()
    for block in keep:
        np.copyto(block, source)
    reused = usage()
    for label, (t0, s0, f0), (t1, s1, f1) in (("fresh", began, fresh), ("reuse", fresh, reused)):
        out[label] = {"wall": t1 - t0, "sys": s1 - s0, "minflt": f1 - f0}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(fill(args.child[0], int(args.child[1]))))
        return
    size = int(args.size_gb * 1e9)
    print(f"{args.size_gb} GB in {BLOCK >> 20} MiB blocks, load average {os.getloadavg()[0]:.1f}, "
          f"THP {open('/sys/kernel/mm/transparent_hugepage/enabled').read().strip()}")
    print(f"  {'way':9s} {'fresh s':>8s} {'sys s':>6s} {'faults':>7s}   {'reuse s':>8s} {'sys s':>6s} {'faults':>7s}")
    for _ in range(args.rounds):
        for way in WAYS:
            env = dict(os.environ, NUMPY_MADVISE_HUGEPAGE="0" if way == "numpy-4k" else "1")
            got = json.loads(subprocess.run([sys.executable, __file__, "--child", way, str(size)], env=env,
                                            check=True, capture_output=True, text=True).stdout)
            f, r = got["fresh"], got["reuse"]
            print(f"  {way:9s} {f['wall']:8.3f} {f['sys']:6.2f} {f['minflt']:7d}   {r['wall']:8.3f} {r['sys']:6.2f} "
                  f"{r['minflt']:7d}")


if __name__ == "__main__":
    main()
