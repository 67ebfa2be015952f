"""Writing a plan as an Orbax checkpoint with Orbax's own partial save, streamed group by group.

Example::

    tensors, nbytes = write_orbax(plan, "/ckpts/out")
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..bundle import Checkpoint
from ..errors import MappingError
from ..plan import Plan, PlanEntry, release_source
from ..progress import ByteProgress
from .out_dir import install
from .signals import signals_between_groups
from .tree import nest

# Bytes per Orbax partial save. Each save and its share of the finalize cost a fixed overhead (about
# half the CPU time of converting 0.5 GB in groups of 64 MB went to it; benchmarks/convert_memory.py),
# so about 8 groups: still a moving progress bar, and two groups in memory stay within a quarter of
# the checkpoint (from a local checkpoint they are views of the mapped file, released once written).
GROUP_MIN_BYTES, GROUP_MAX_BYTES, GROUPS = 64 << 20, 512 << 20, 8


def _location(entry: PlanEntry) -> tuple[int, int]:
    """Where an entry's bytes start (shard, offset), to read the checkpoint front to back."""
    source = entry.source
    name, reader = getattr(source, "name", None), getattr(source, "reader", None)
    if isinstance(reader, Checkpoint) and name in reader:
        info = reader.info(name)
        stored = info.stored if info.stored is not None else info.slices[0][1]
        return stored.shard_id, stored.offset
    return 1 << 62, 0


def _nbytes(entry: PlanEntry) -> int:
    return math.prod(entry.shape) * np.dtype(entry.dtype).itemsize


def total_bytes(plan: Plan) -> int:
    """The bytes of every entry of ``plan``, as written."""
    return sum(_nbytes(e) for e in plan.entries.values())


def _groups(plan: Plan) -> Iterator[list[tuple[str, PlanEntry]]]:
    """Entries in checkpoint order, in groups of about ``total / GROUPS`` bytes (within the bounds)."""
    budget = min(GROUP_MAX_BYTES, max(GROUP_MIN_BYTES, total_bytes(plan) // GROUPS))
    group: list[tuple[str, PlanEntry]] = []
    size = 0
    for path, entry in sorted(plan.entries.items(), key=lambda kv: _location(kv[1])):
        if group and size + _nbytes(entry) > budget:
            yield group
            group, size = [], 0
        group.append((path, entry))
        size += _nbytes(entry)
    if group:
        yield group


def write_orbax(plan: Plan, out: str | os.PathLike, *, force: bool = False, progress: bool = False,
                custom_metadata: dict | None = None) -> tuple[int, int]:
    """Write every entry of ``plan`` to the new Orbax checkpoint ``out``; returns ``(tensors, bytes)``.

    At most two groups of tensors are in memory: one being written (``ocp.v1.partial.save_async``)
    while the next is read. ``ocp.v1.partial.finalize`` completes ``OUT.tmp-<random>``, which then
    becomes ``out`` (replacing an existing ``out`` only with ``force``). On any error or interrupt
    (SIGINT or SIGTERM) the temporary files are removed.

    Example::

        write_orbax(plan, "/ckpts/out")
    """
    import orbax.checkpoint as ocp

    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{secrets.token_hex(4)}")
    ctx = ocp.v1.Context()
    ctx.array.saving.use_compression = False   # 2x faster; weights barely compress
    # Our arrays are ours, or read-only views of a mapped checkpoint that stay valid until written.
    ctx.memory.deepcopy_host_arrays = False
    total, tensors, written = total_bytes(plan), 0, 0
    pending: tuple[Any, int, str, list] | None = None  # the group being written while the next one is read
    try:
        with ctx, ByteProgress(total, progress, "converting") as bar, signals_between_groups() as check:
            for group in _groups(plan):
                items = [(path, _read(path, entry)) for path, entry in group]
                check()
                if pending is not None:
                    _finish(pending, bar)
                size = sum(a.nbytes for _, a in items)
                meta = custom_metadata if not tensors else None
                tensors, written = tensors + len(group), written + size
                label = f"converting ({tensors}/{len(plan.entries)} tensors)"
                pending = (ocp.v1.partial.save_async(tmp, nest(items), custom_metadata=meta), size, label, group)
                del items
            if pending is not None:
                _finish(pending, bar)
                pending = None
            check()
            ocp.v1.partial.finalize(tmp)
        install(tmp, out, force)
    except BaseException:
        if pending is not None:  # let Orbax's writer threads stop before removing their files
            with contextlib.suppress(BaseException):
                pending[0].result()
        for leftover in tmp.parent.glob(glob.escape(tmp.name) + "*"):  # Orbax adds suffixes of its own
            shutil.rmtree(leftover, ignore_errors=True)
        raise
    return tensors, written


def _finish(pending: tuple[Any, int, str, list], bar: ByteProgress) -> None:
    response, size, label, group = pending
    response.result()
    for _, entry in group:  # written: a mapped checkpoint's pages of it leave resident memory
        release_source(entry.source)
    bar.advance(size, description=label)


def _read(path: str, entry: PlanEntry) -> np.ndarray:
    array = entry.read()
    if array.shape != entry.shape or array.dtype != entry.dtype:
        raise MappingError(f"{entry.describe()}: read {list(array.shape)} {array.dtype}, the plan says "
                           f"{list(entry.shape)} {np.dtype(entry.dtype).name}")
    return array
