"""Host memory for loaded blocks: page-aligned buffers that are reused once jax lets go of them.

A fresh page costs a page fault, and on virtual machines (and GPU/TPU hosts staging through new
buffers) that fault costs far more than copying the page's 4 KB. Loads therefore take their host
blocks from a :class:`HostPool`:

- a block is an anonymous private mapping of its own, in ordinary 4 KB pages: no transparent
  huge-page advice, whose 2 MB faults stalled for milliseconds each on the machine we measured
  (numpy advises huge pages for every array of 4 MB or more);
- when the last array using a block dies (the params are dropped, or an accelerator's copy of a
  staged block is done), the block returns to the pool, marked ``MADV_FREE`` so the kernel may
  take its pages back under memory pressure; the next load of blocks of that size reuses it with
  no page faults. At most ``retain_bytes`` of free blocks are kept, and free blocks are unmapped
  when fresh blocks of other sizes are needed, so the pool never holds more memory than the most
  that was in use at once;
- with a ``limit`` (staging for accelerators), :meth:`HostPool.take` waits while the blocks in use
  would exceed it, so a load's host memory stays within its bytes in flight.

Example::

    pool = HostPool()
    block, = pool.take([((1024, 3072), np.dtype(np.float32))])
    block[:] = 1.0                         # this memory is reused once ``block`` is gone
"""

from __future__ import annotations

import dataclasses
import gc
import math
import mmap
import os
import threading
import time
import weakref
from typing import Sequence

import numpy as np

#: Blocks smaller than this come from numpy: not worth a mapping of their own, and a process may
#: hold at most vm.max_map_count (65530 by default) mappings.
MIN_POOLED = 256 << 10
#: At most one garbage collection per this many seconds while a bounded pool waits (see ``HostPool.collect``).
WAIT_SECONDS = 0.05
#: jax on CPU takes a host buffer without copying it when it is aligned to this many bytes.
ALIGNMENT = 64


def default_retain_bytes() -> int:
    """Free bytes a pool keeps for reuse: ``TF2FLAX_HOST_POOL_BYTES``, else a quarter of the RAM."""
    value = os.environ.get("TF2FLAX_HOST_POOL_BYTES")
    if value:
        return int(float(value))
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError):
        return 1 << 30


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-order numpy array whose data starts on an ``ALIGNMENT``-byte boundary."""
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    skip = -raw.ctypes.data % ALIGNMENT
    return raw[skip:skip + nbytes].view(dtype).reshape(shape)


@dataclasses.dataclass
class PoolStats:
    """What a pool handed out: bytes in fresh and in reused blocks, blocks in use now and at most."""

    fresh_bytes: int = 0
    reused_bytes: int = 0
    fresh_blocks: int = 0
    reused_blocks: int = 0
    in_use_bytes: int = 0
    peak_in_use_bytes: int = 0
    waits: int = 0


class HostPool:
    """Page-aligned host blocks, reused across leaves and loads; see the module docstring.

    ``limit`` (bytes) bounds the pooled blocks in use at once: :meth:`take` waits for others to
    be returned, except that a request is always granted when no pooled block is in use (so a
    single block larger than the limit cannot deadlock). ``None``: no bound (blocks that become
    the params themselves, as on CPU devices). Blocks under ``min_bytes`` come from numpy.
    ``huge_pages`` (default: ``TF2FLAX_HUGE_PAGES=1``) advises transparent huge pages for fresh
    blocks: fewer faults, each zeroing 2 MB, which pays on hosts that have free huge pages at hand.
    """

    def __init__(self, limit: int | None = None, retain_bytes: int | None = None, min_bytes: int = MIN_POOLED,
                 huge_pages: bool | None = None):
        self.limit = limit
        self.min_bytes = min_bytes
        self.huge_pages = os.environ.get("TF2FLAX_HUGE_PAGES") == "1" if huge_pages is None else huge_pages
        self.retain_bytes = default_retain_bytes() if retain_bytes is None else retain_bytes
        self.stats = PoolStats()
        self._free: dict[int, list[mmap.mmap]] = {}
        self._free_bytes = 0
        self._changed = threading.Condition(threading.RLock())
        self._collected = -math.inf

    def take(self, requests: Sequence[tuple[tuple[int, ...], np.dtype]]) -> list[np.ndarray]:
        """Uninitialised C-order arrays of the given (shape, dtype)s, all granted at once."""
        sizes = [math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in requests]
        pooled = sum(_rounded(n) for n in sizes if n >= self.min_bytes)
        with self._changed:
            if self.limit is not None:
                while self.stats.in_use_bytes and self.stats.in_use_bytes + pooled > self.limit:
                    self.stats.waits += 1
                    if not self._changed.wait(timeout=WAIT_SECONDS):
                        self._collect(WAIT_SECONDS)
            self.stats.in_use_bytes += pooled
            self.stats.peak_in_use_bytes = max(self.stats.peak_in_use_bytes, self.stats.in_use_bytes)
            maps = [self._reuse(_rounded(n)) if n >= self.min_bytes else None for n in sizes]
            fresh = sum(_rounded(n) for n, m in zip(sizes, maps) if m is None and n >= self.min_bytes)
            evicted = self._evict(fresh)
        for mapped in evicted:
            _unmap(mapped)
        out: list[np.ndarray] = []
        try:
            for (shape, dtype), n, mapped in zip(requests, sizes, maps):
                out.append(self._wrap(tuple(shape), np.dtype(dtype), n, mapped))
        except BaseException:  # out of memory: what was not handed out is no longer in use
            with self._changed:
                for n, mapped in list(zip(sizes, maps))[len(out):]:
                    if n >= self.min_bytes:
                        self.stats.in_use_bytes -= _rounded(n)
                        if mapped is not None:
                            self._free.setdefault(len(mapped), []).append(mapped)
                            self._free_bytes += len(mapped)
                self._changed.notify_all()
            raise
        return out

    def _wrap(self, shape: tuple[int, ...], dtype: np.dtype, nbytes: int, mapped: mmap.mmap | None) -> np.ndarray:
        """An array over ``mapped`` (a fresh block when None) that gives it back when it is gone."""
        if nbytes < self.min_bytes:
            return aligned_empty(shape, dtype)
        if mapped is None:
            mapped = self._fresh(_rounded(nbytes))
        array = np.frombuffer(mapped, dtype, count=math.prod(shape))
        owner = array
        while isinstance(owner, np.ndarray):
            owner = owner.base
        # Every array over this memory holds ``owner`` (the buffer object numpy keeps as the base
        # of the array and of every view of it), so it dies only when the last of them does: then
        # the block is free.
        weakref.finalize(owner, self._give_back, mapped).atexit = False  # at exit, nothing to reuse
        return array.reshape(shape)

    @property
    def free_bytes(self) -> int:
        """Bytes of free blocks kept for reuse."""
        return self._free_bytes

    def clear(self) -> None:
        """Unmap every free block (blocks in use are unmapped when they are returned)."""
        with self._changed:
            free, self._free, self._free_bytes = self._free, {}, 0
        for blocks in free.values():
            for mapped in blocks:
                _unmap(mapped)

    def collect(self) -> None:
        """Take back the blocks that only garbage still holds, if any block is in use (a load calls
        this before it starts): jax keeps the host arrays it aliases in reference cycles, so dropped
        params give their blocks back only when the garbage collector runs."""
        with self._changed:
            self._collect(0.0)

    def _collect(self, interval: float) -> None:
        now = time.monotonic()
        if self.stats.in_use_bytes and now - self._collected > interval:
            self._collected = now
            gc.collect()

    def _evict(self, nbytes: int) -> list[mmap.mmap]:
        """Free blocks of at least ``nbytes`` in all (or all of them), taken out of the pool to be
        unmapped: fresh blocks replace free ones of other sizes, so the pool's memory (blocks in
        use plus free ones) never grows beyond the most that was in use at once."""
        evicted = []
        while nbytes > 0 and self._free:
            size = max(self._free)
            blocks = self._free[size]
            evicted.append(blocks.pop())
            if not blocks:
                del self._free[size]
            self._free_bytes -= size
            nbytes -= size
        return evicted

    def _reuse(self, size: int) -> mmap.mmap | None:
        blocks = self._free.get(size)
        if not blocks:
            return None
        self._free_bytes -= size
        self.stats.reused_bytes += size
        self.stats.reused_blocks += 1
        mapped = blocks.pop()
        if not blocks:
            del self._free[size]
        return mapped

    def _fresh(self, size: int) -> mmap.mmap:
        with self._changed:
            self.stats.fresh_bytes += size
            self.stats.fresh_blocks += 1
        mapped = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if self.huge_pages and hasattr(mmap, "MADV_HUGEPAGE"):
            mapped.madvise(mmap.MADV_HUGEPAGE)
        return mapped

    def _give_back(self, mapped: mmap.mmap) -> None:
        size = len(mapped)
        try:  # before anyone can take it again: a write after MADV_FREE would be kept, one before lost
            mapped.madvise(mmap.MADV_FREE)
        except (AttributeError, OSError, ValueError):  # no MADV_FREE here: the pages just stay
            pass
        with self._changed:
            self.stats.in_use_bytes -= size
            keep = self._free_bytes + size <= self.retain_bytes
            if keep:
                self._free.setdefault(size, []).append(mapped)
                self._free_bytes += size
            self._changed.notify_all()
        if not keep:
            _unmap(mapped)


def _unmap(mapped: mmap.mmap) -> None:
    try:
        mapped.close()
    except BufferError:  # still exported somewhere: unmapped by the mmap object's own finalizer
        pass


def _rounded(nbytes: int) -> int:
    return -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE


#: The pool of blocks that become params on CPU devices (no bound on blocks in use).
HOST_POOL = HostPool()


def release_host_memory() -> None:
    """Give the free blocks kept for reuse back to the system.

    Example::

        params = tf2flax.init_params(path, mapping, abstract)
        del params
        tf2flax.hostmem.release_host_memory()
    """
    HOST_POOL.clear()
