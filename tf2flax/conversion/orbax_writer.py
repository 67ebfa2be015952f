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
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from ..formats import Checkpoint
from ..errors import MappingError
from ..plan import Plan, PlanEntry, release_source
from ..progress import ByteProgress
from .out_dir import install, write_error
from .signals import signals_between_groups
from .tree import nest

# Bytes per Orbax partial save. Each save and its share of the finalize cost a fixed overhead (CPU
# time of converting 0.5 GB: 0.86 s in 8 groups, 0.64 s in 4, 0.38 s in 2; benchmarks/convert_memory.py),
# so as few groups as the memory bound allows: two groups are in memory at once (from a local
# checkpoint, views of the mapped file, released once written), and 4 groups keep them within half
# the checkpoint (peak <= 0.5 x checkpoint + 0.5 GB).
GROUP_MIN_BYTES, GROUP_MAX_BYTES, GROUPS = 64 << 20, 512 << 20, 4
T = TypeVar("T")


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


def groups(plan: Plan) -> Iterator[list[tuple[str, PlanEntry]]]:
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


class Solo:
    """One process: reads whole tensors as numpy arrays and has nobody to agree with. The interface
    a distributed conversion's :class:`~.distributed.Team` shares."""

    primary = True

    def token(self) -> str:
        return secrets.token_hex(4)

    def step(self, name: str, fn: Callable[[], T]) -> T:
        return fn()

    def read(self, group: list[tuple[str, PlanEntry]]) -> list[tuple[str, Any]]:
        return [(path, _read(path, entry)) for path, entry in group]

    def share_bytes(self, plan: Plan) -> int:
        return total_bytes(plan)

    def committed(self, tmp: Path) -> None:
        pass


def orbax_context() -> Any:
    """The Orbax context every conversion writes under."""
    import orbax.checkpoint as ocp

    ctx = ocp.v1.Context()
    ctx.array.saving.use_compression = False   # 2x faster; weights barely compress
    # Our arrays are ours, or read-only views of a mapped checkpoint that stay valid until written.
    ctx.memory.deepcopy_host_arrays = False
    ctx.array.saving.use_replica_parallel = False  # replica 0 writes (distributed: the others are placeholders)
    return ctx


def write_orbax(plan: Plan, out: str | os.PathLike, *, force: bool = False, progress: bool = False,
                custom_metadata: dict | None = None, team: Any = None) -> tuple[int, int]:
    """Write every entry of ``plan`` to the new Orbax checkpoint ``out``; returns ``(tensors, bytes)``.

    At most two groups of tensors are in memory: one being written (``ocp.v1.partial.save_async``)
    while the next is read. ``ocp.v1.partial.finalize`` completes ``OUT.tmp-<random>``, which then
    becomes ``out`` (replacing an existing ``out`` only with ``force``). On any error or interrupt
    (SIGINT or SIGTERM) the temporary files are removed. ``team`` (a :class:`~.distributed.Team`)
    makes it one process of a distributed conversion: each process reads and writes its share, all
    agree after every step, and process 0 installs ``out``; ``(tensors, bytes)`` are then the whole
    checkpoint's.

    Example::

        write_orbax(plan, "/ckpts/out")
    """
    import orbax.checkpoint as ocp

    team = team or Solo()
    out = Path(out).absolute()
    team.step("create the output's parent", lambda: out.parent.mkdir(parents=True, exist_ok=True))
    tmp = out.with_name(f"{out.name}.tmp-{team.token()}")
    ctx = orbax_context()
    tensors, written = 0, 0
    pending: tuple[Any, int, str, list] | None = None  # the group being written while the next one is read
    try:
        with ctx, ByteProgress(team.share_bytes(plan), progress, "converting") as bar, \
                signals_between_groups() as check:
            for group in groups(plan):
                items = team.step(f"read {group[0][0]}",
                                  _for_out(out, tmp, lambda: _read_and_finish(team, group, pending, bar)))
                pending = None
                check()
                meta = custom_metadata if not tensors else None
                tensors, written = tensors + len(group), written + sum(_nbytes(entry) for _, entry in group)
                label = f"converting ({tensors}/{len(plan.entries)} tensors)"
                share = team.share_bytes(Plan(dict(group), plan.report))
                pending = (ocp.v1.partial.save_async(tmp, nest(items), custom_metadata=meta), share, label, group)
                del items
            last, pending = pending, None
            if last is not None:
                team.step("write the last tensors", _for_out(out, tmp, lambda: _finish(last, bar)))
            check()
            ocp.v1.partial.finalize(tmp)
            team.step("install the output", _for_out(out, tmp, lambda: _install(team, tmp, out, force)))
    except BaseException as e:
        if pending is not None:  # let Orbax's writer threads stop before removing their files
            with contextlib.suppress(BaseException):
                pending[0].result()
        if team.primary:
            for leftover in tmp.parent.glob(glob.escape(tmp.name) + "*"):  # Orbax adds suffixes of its own
                shutil.rmtree(leftover, ignore_errors=True)
        failed = write_error(out, tmp, e)  # a raw errno naming our temporary directory: say it for OUT
        if failed is not None:
            raise failed from e
        raise
    return tensors, written


def _for_out(out: Path, tmp: Path, fn: Callable[[], T]) -> Callable[[], T]:
    """``fn``, raising its errors about the output as :func:`write_error` words them (naming ``out``,
    never ``tmp``) inside the step, so that every process of a distributed conversion hears them so."""
    def run() -> T:
        try:
            return fn()
        except Exception as e:
            failed = write_error(out, tmp, e)
            if failed is None:
                raise
            raise failed from e

    return run


def _install(team: Any, tmp: Path, out: Path, force: bool) -> None:
    if team.primary:
        team.committed(tmp)
        install(tmp, out, force)


def _read_and_finish(team: Any, group: list[tuple[str, PlanEntry]], pending: tuple[Any, int, str, list] | None,
                     bar: ByteProgress) -> list[tuple[str, Any]]:
    """Read ``group`` (this process's share), then wait for the previous group's write."""
    items = team.read(group)
    if pending is not None:
        _finish(pending, bar)
    return items


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
