"""Materialize a plan: read each device's region of each target and place it with its sharding.

Each leaf becomes a ``jax.Array`` assembled from one array per device. Only the regions this
process's devices hold are read (a region replicated on several local devices is read once).
From a local checkpoint the reads are views of the mapped data files, so each device's block is
copied once, from the page cache into a host block from a pool (``hostmem.HostPool``); no
full-tensor buffer sits in between, even where a device's block is a strided region. A leaf read
whole goes in one pass (``Checkpoint.read_rows``): each chunk of rows is checksummed while in
cache and copied, on a pool of copier threads, into the device blocks it falls in. On CPU devices
the block is the device buffer (jax takes it without copying) and is reused once the params are
dropped; on accelerators it is a staging block, reused once copied to the device, with at most
``bytes_in_flight`` of them in use. Leaves are read and placed on a thread pool, with a bound on
the bytes in flight, so peak host memory is this process's share of the model plus that bound.

Example::

    arrays, stats = materialize(plan, {"params/w": NamedSharding(mesh, P("x", None))})
    stats.bytes_read
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import os
import time
from typing import Callable, Mapping

import jax
import numpy as np

from .hostmem import ALIGNMENT, HOST_POOL, HostPool
from .plan import Cast, Plan, PlanEntry, release_source
from .regions import Index, index_shape, normalize_index
from .progress import human_bytes, human_rate

DEFAULT_BYTES_IN_FLIGHT = 64 << 20
DEFAULT_WORKERS = 8


@dataclasses.dataclass
class LoadStats:
    """What a load read: bytes from storage, tensors placed, regions read, wall seconds.

    ``full_reads`` counts tensors read whole because a transform could not map the regions this
    process holds (a callable, or a reshape whose regions are not one source box).
    """

    bytes_read: int = 0
    tensors: int = 0
    regions: int = 0
    full_reads: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """``'46 tensors, 103 KB read in 0.05 s (2.1 MB/s)'``."""
        return (f"{self.tensors} tensors, {human_bytes(self.bytes_read)} read in {self.seconds:.2f} s "
                f"({human_rate(self.bytes_read, self.seconds)})")


def _key(index: Index) -> tuple[tuple[int, int], ...]:
    """A hashable form of a region (slices are unhashable before Python 3.12)."""
    return tuple((s.start, s.stop) for s in index)


def _regions(entry: PlanEntry, sharding: jax.sharding.Sharding) -> list[Index]:
    """The distinct regions this process's devices hold (replicas are read once)."""
    shape = entry.shape
    indices = (normalize_index(idx, shape) for idx in sharding.addressable_devices_indices_map(shape).values())
    return list({_key(r): r for r in indices}.values())


def _nbytes(entry: PlanEntry, regions: list[Index]) -> int:
    return sum(math.prod(index_shape(r)) for r in regions) * entry.dtype.itemsize


def planned_bytes(plan: Plan, shardings: Mapping[str, jax.sharding.Sharding]) -> int:
    """Bytes of target data this process will hold: what ``on_progress`` counts up to."""
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return sum(_nbytes(e, _regions(e, shardings.get(t) or default)) for t, e in plan.entries.items())


def _hull(regions: list[Index]) -> Index | None:
    """The bounding box of ``regions`` if they tile it exactly (a process's share of a sharded leaf)."""
    hull = tuple(slice(min(r[i].start for r in regions), max(r[i].stop for r in regions))
                 for i in range(len(regions[0])))
    covered = sum(math.prod(index_shape(r)) for r in regions)
    return hull if len(regions) > 1 and covered == math.prod(index_shape(hull)) else None


def _owned(blocks: dict, pool: HostPool) -> dict:
    """``blocks`` as C-order, aligned memory of their own, which jax then holds without another copy.

    Views (of a mapped data file, or of a larger block) are copied here, once, straight into the
    buffers the devices keep: no jax array ever aliases a checkpoint file, so a file changed after
    loading cannot change the params. The buffers of a leaf are taken from ``pool`` at once, so a
    bounded pool never has threads each holding part of a leaf and waiting for the rest.
    """
    copy = {key: b for key, b in blocks.items()
            if not (b.base is None and b.flags.c_contiguous and b.flags.writeable and b.ctypes.data % ALIGNMENT == 0)}
    out = dict(zip(copy, pool.take([(b.shape, b.dtype) for b in copy.values()])))
    for key, b in copy.items():
        np.copyto(out[key], b)
    return {key: out.get(key, b) for key, b in blocks.items()}


def _blocks(entry: PlanEntry, regions: list[Index]) -> dict:
    """{region key: block} for ``regions``: views where the source allows, read as few times as possible.

    Regions that tile a box (the usual case: this process's devices hold adjacent shards) are
    read as that box in one request, and each device's block is a view of it; entries whose
    transforms cannot map regions are read whole once.
    """
    if not entry.reads_regions(regions):
        whole = entry.read(None)
        return {_key(r): whole[r] for r in regions}
    hull = _hull(regions) if regions and regions[0] else None
    if hull is not None and entry.reads_regions([hull]):
        box = entry.read(hull, contiguous=False)
        return {_key(r): box[tuple(slice(s.start - h.start, s.stop - h.start) for s, h in zip(r, hull))]
                for r in regions}
    return {_key(r): entry.read(r, contiguous=False) for r in regions}


def _streamed(entry: PlanEntry, regions: list[Index], pool: HostPool) -> dict | None:
    """{region key: block} of a leaf read whole in one pass (``Checkpoint.read_rows``): each chunk of
    rows is checksummed while in the CPU's cache and copied (and cast) straight into the device
    blocks it falls in. None where the leaf is not one checkpoint tensor, cast at most, whose
    regions tile the whole tensor (then :func:`_blocks` reads it)."""
    source = entry.source
    reader, name = getattr(source, "reader", None), getattr(source, "name", None)
    read_rows = getattr(reader, "read_rows", None)
    shape = entry.shape
    if (read_rows is None or not isinstance(name, str) or not shape or not regions
            or not all(isinstance(t, Cast) for t in entry.transforms)
            or sum(math.prod(index_shape(r)) for r in regions) != math.prod(shape)):
        return None
    blocks = dict(zip((_key(r) for r in regions), pool.take([(index_shape(r), entry.dtype) for r in regions])))
    copies = []
    try:
        for first, rows in read_rows(name):
            last = first + rows.shape[0]
            pairs = [(blocks[_key(r)][lo - r[0].start:hi - r[0].start], rows[(slice(lo - first, hi - first), *r[1:])])
                     for r in regions for lo, hi in [(max(first, r[0].start), min(last, r[0].stop))] if lo < hi]
            copies.append(_copier().submit(_copy_pairs, pairs))
    finally:  # a failed checksum raises here: no copy may still be writing once the blocks are dropped
        concurrent.futures.wait(copies)
    for copy in copies:
        copy.result()
    return blocks


def _copy_pairs(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for out, rows in pairs:
        np.copyto(out, rows, casting="unsafe")


_COPIER: dict[int, concurrent.futures.ThreadPoolExecutor] = {}


def _copier() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that copy streamed chunks into device blocks (numpy copies without the GIL), so
    the checksum of one chunk, the copy of another and the page faults of fresh blocks run on
    every core. One pool per process id: a forked child has none of its parent's threads."""
    pid = os.getpid()
    if pid not in _COPIER:
        _COPIER.clear()
        _COPIER[pid] = concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                                                             thread_name_prefix="tf2flax-copy")
    return _COPIER[pid]


def _place(entry: PlanEntry, sharding: jax.sharding.Sharding, regions: list[Index],
           pool: HostPool, staging: bool) -> tuple[jax.Array, int]:
    """Read one leaf and put each device's block on its device: one copy per block, from the page
    cache (or the read buffer) into a host block from ``pool``. Without ``staging`` (CPU devices)
    the device keeps that block (jax on CPU takes an aligned buffer without copying; devices
    holding the same block share it, as jax's own replicated puts do). With ``staging`` the block
    is copied to the device (asynchronously) and returns to the pool once jax is done with it.
    Returns (array, regions read)."""
    streamed = _streamed(entry, regions, pool)
    blocks = streamed if streamed is not None else _owned(_blocks(entry, regions), pool)
    release_source(entry.source)  # copied out: the mapped pages may go
    if not staging:
        array = jax.make_array_from_callback(entry.shape, sharding,
                                             lambda index: blocks[_key(normalize_index(index, entry.shape))])
        return array, len(blocks)
    devices = sharding.addressable_devices_indices_map(entry.shape)
    arrays = jax.device_put([blocks[_key(normalize_index(index, entry.shape))] for index in devices.values()],
                            list(devices))
    # jax on CPU may alias an aligned host block: copy it on the device, as an accelerator's transfer
    # would, so the block goes back to the pool once the copy is done.
    arrays = [a.copy() if device.platform == "cpu" else a for a, device in zip(arrays, devices)]
    return jax.make_array_from_single_device_arrays(entry.shape, sharding, arrays), len(blocks)


def stages(sharding: jax.sharding.Sharding) -> bool:
    """Whether a leaf placed with ``sharding`` goes through host staging blocks (accelerators) rather
    than keeping its host blocks (CPU devices)."""
    return any(d.platform != "cpu" for d in sharding.device_set)


def materialize(
    plan: Plan,
    shardings: Mapping[str, jax.sharding.Sharding],
    *,
    bytes_in_flight: int = DEFAULT_BYTES_IN_FLIGHT,
    workers: int = DEFAULT_WORKERS,
    on_progress: Callable[[str, int], None] | None = None,
    staging: bool | None = None,
    host_pool: HostPool | None = None,
) -> tuple[dict[str, jax.Array], LoadStats]:
    """Read and place every entry of ``plan``; return {target path: jax.Array} and stats.

    ``shardings[target]`` says where each leaf goes (the default device when absent).
    ``on_progress(target, nbytes)`` is called after each leaf is placed.

    Host blocks come from ``host_pool``. By default, leaves on CPU devices keep their blocks
    (from :data:`~tf2flax.hostmem.HOST_POOL`, reused once the params are dropped), and leaves on
    accelerators are staged (``staging=True`` forces it, ``False`` forbids it): their blocks come
    from a pool of at most ``bytes_in_flight`` bytes in use, reused from leaf to leaf, and reads
    of the next leaves overlap the devices' copies of the last ones.
    """
    began = time.perf_counter()
    stats = LoadStats()
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    out: dict[str, jax.Array] = {}
    pending: collections.deque = collections.deque()
    in_flight = 0
    staged = {target: stages(shardings.get(target) or default) if staging is None else staging
              for target in plan.entries}
    staging_pool = host_pool or HostPool(limit=bytes_in_flight, retain_bytes=bytes_in_flight)
    keeping_pool = host_pool or HOST_POOL
    if not all(staged.values()):
        keeping_pool.collect()  # blocks of dropped params come back for this load to reuse

    def finish() -> None:
        nonlocal in_flight
        target, entry, future, nbytes, whole = pending.popleft()
        out[target], regions = future.result()
        stats.tensors += 1
        stats.regions += regions
        stats.full_reads += whole
        in_flight -= nbytes
        if on_progress:
            on_progress(target, nbytes)

    # Leaves are read and placed on the pool's threads, several at once, so one leaf's copies
    # overlap another's reads; the bytes in flight bound what is read but not yet placed.
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tf2flax-read") as pool:
        try:
            for target, entry in plan.entries.items():
                sharding = shardings.get(target) or default
                regions = _regions(entry, sharding)
                nbytes = _nbytes(entry, regions)
                while pending and in_flight + nbytes > bytes_in_flight:
                    finish()
                host = staging_pool if staged[target] else keeping_pool
                pending.append((target, entry, pool.submit(_place, entry, sharding, regions, host, staged[target]),
                                nbytes, not entry.reads_regions(regions)))
                in_flight += nbytes
            while pending:
                finish()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    stats.seconds = time.perf_counter() - began
    return out, stats
