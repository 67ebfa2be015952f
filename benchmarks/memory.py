"""Resident memory of this process, for the benchmarks' peak-memory columns.

``peak_rss`` reads ``VmHWM`` (this address space's high-water mark), not ``getrusage().ru_maxrss``:
Linux carries a parent's peak into a child started with ``vfork`` + ``exec`` (as ``subprocess``
does), so a benchmark whose parent had just written a 1 GB checkpoint saw that gigabyte in every
child's ``ru_maxrss``.

Example::

    before = rss(); work(); print(peak_rss() - before)
"""

from __future__ import annotations

import os


def rss() -> int:
    """Bytes resident now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """Most bytes resident at once since this process's ``exec``."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
