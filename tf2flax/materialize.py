"""Materialize a plan: read each device's region of each target and place it with its sharding.

Each leaf becomes a ``jax.Array`` assembled from one array per device. Only the regions this
process's devices hold are read (a region replicated on several local devices is read once).
From a local checkpoint the reads are views of the mapped data files, so each device's block is
copied once, from the page cache straight into the aligned buffer jax keeps (jax on CPU takes
such a buffer without copying); no full-tensor buffer sits in between, even where a device's
block is a strided region. A leaf read whole goes in one pass (``Checkpoint.read_rows``): each
chunk of rows is checksummed while in cache and copied into the device blocks it falls in. Leaves are read and placed on a thread pool, with a bound on the bytes
in flight, so peak host memory is this process's share of the model plus that bound.

Example::

    arrays, stats = materialize(plan, {"params/w": NamedSharding(mesh, P("x", None))})
    stats.bytes_read
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
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


def _owned(block: np.ndarray, pool: HostPool) -> np.ndarray:
    """``block`` as C-order, aligned memory of its own, which jax then holds without another copy.

    A view (of a mapped data file, or of a larger block) is copied here, once, straight into
    the buffer the device keeps: no jax array ever aliases a checkpoint file, so a file changed
    after loading cannot change the params.
    """
    if (block.base is None and block.flags.c_contiguous and block.flags.writeable
            and block.ctypes.data % ALIGNMENT == 0):
        return block
    out, = pool.take([(block.shape, block.dtype)])
    np.copyto(out, block)
    return out


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
    for first, rows in read_rows(name):
        last = first + rows.shape[0]
        for r in regions:
            lo, hi = max(first, r[0].start), min(last, r[0].stop)
            if lo < hi:
                np.copyto(blocks[_key(r)][lo - r[0].start:hi - r[0].start],
                          rows[(slice(lo - first, hi - first), *r[1:])], casting="unsafe")
    return blocks


def _place(entry: PlanEntry, sharding: jax.sharding.Sharding, regions: list[Index],
           pool: HostPool) -> tuple[jax.Array, int]:
    """Read one leaf and put each device's block on its device: one copy per block, from the page
    cache (or the read buffer) into the aligned memory the device then keeps (jax on CPU takes it
    without copying; devices holding the same block share it, as jax's own replicated puts do).
    Returns (array, regions read)."""
    streamed = _streamed(entry, regions, pool)
    blocks = streamed if streamed is not None else {key: _owned(b, pool) for key, b in _blocks(entry, regions).items()}
    release_source(entry.source)  # copied out: the mapped pages may go
    array = jax.make_array_from_callback(entry.shape, sharding,
                                         lambda index: blocks[_key(normalize_index(index, entry.shape))])
    return array, len(blocks)


def materialize(
    plan: Plan,
    shardings: Mapping[str, jax.sharding.Sharding],
    *,
    bytes_in_flight: int = DEFAULT_BYTES_IN_FLIGHT,
    workers: int = DEFAULT_WORKERS,
    on_progress: Callable[[str, int], None] | None = None,
) -> tuple[dict[str, jax.Array], LoadStats]:
    """Read and place every entry of ``plan``; return {target path: jax.Array} and stats.

    ``shardings[target]`` says where each leaf goes (the default device when absent).
    ``on_progress(target, nbytes)`` is called after each leaf is placed.
    """
    began = time.perf_counter()
    stats = LoadStats()
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    out: dict[str, jax.Array] = {}
    pending: collections.deque = collections.deque()
    in_flight = 0

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
                pending.append((target, entry, pool.submit(_place, entry, sharding, regions, HOST_POOL), nbytes,
                                not entry.reads_regions(regions)))
                in_flight += nbytes
            while pending:
                finish()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    stats.seconds = time.perf_counter() - began
    return out, stats
