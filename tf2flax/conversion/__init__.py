"""``tf2flax.convert``: a TensorFlow checkpoint -> an Orbax checkpoint, streamed, in constant memory.

Without a map, every tensor becomes a leaf at the path of its default name split on ``/`` (see
:mod:`tf2flax.naming`; optimizer state and bookkeeping are left out unless ``include_optimizer``).
With ``mapping``/``rules``/``preset``/``transforms`` the output tree is the one the map describes. There
is no model, so the target leaves are derived from the checkpoint: a scope entry
``'ckpt_scope/': 'out_scope/'`` makes a leaf ``out_scope/<rest>`` of every tensor with a (renamed) name
``ckpt_scope/<rest>`` (default name first, then a TF2 variable's ``full_name`` and object path; what
default naming leaves out is skipped); an exact entry ``'name': 'out/path'`` makes one leaf, of any
tensor; an entry that matches nothing is a MappingError naming it and the closest names. Without a map,
the (renamed) default names are the leaves. Each leaf gets the shape and dtype
of its source after its transforms, and the mapping engine (:func:`tf2flax.mapping.build_plan`) then
builds and checks the plan with TensorFlow's rules, exactly as for :func:`tf2flax.init_params`.

The output is written with Orbax's own partial save (``ocp.v1.partial.save_async`` of groups of
leaves, then ``ocp.v1.partial.finalize``) into ``OUT.tmp-<random>`` and renamed to ``OUT`` at the
end, so that at most two groups of tensors are in memory and an interrupted run leaves no ``OUT``.
A ``gs://`` OUT is written in place by one Orbax save and committed with Orbax's GCS protocol (see
:mod:`.remote_out`). It restores with Orbax alone::

    import orbax.checkpoint as ocp
    params = ocp.v1.load(out)                                      # or, with the v0 API:
    params = ocp.StandardCheckpointer().restore(f"{out}/state")

The parts, each in its module: :mod:`.mapfile` (``--map`` files), :mod:`.plans` (the plan from the
checkpoint and the map), :mod:`.tree` (output paths: ``__value__`` leaves, paths Orbax would store
wrongly), :mod:`.out_dir` (the output directory: checked first, installed last), :mod:`.orbax_writer`
(the streamed Orbax write), :mod:`.remote_out` (``gs://`` output) and :mod:`.signals` (interrupts while
Orbax's threads write).

Example::

    result = tf2flax.convert("/runs/bert/model.ckpt-1000", "/ckpts/bert-orbax", dtype="bfloat16")
    print(result.summary())
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
from typing import Any, Mapping

import numpy as np

from ..formats import Checkpoint, open_checkpoint
from ..errors import MappingError
from ..mapping.names import check_part_axis
from ..naming import OPTIMIZER, DefaultName, default_names
from ..plan import Plan
from ..progress import human_bytes, human_rate
from ..storage import is_url
from .mapfile import load_map_file
from .orbax_writer import Solo, total_bytes, write_orbax
from .out_dir import check_out, checkpoint_files, leftovers_note
from .remote_out import check_output_url, write_orbax_url
from .plans import default_plan, float_dtype, mapped_plan
from .tree import VALUE_KEY, settle_paths


class ConvertWarning(UserWarning):
    """Tensors a conversion leaves out because Orbax cannot store them (strings, zero-size arrays)."""


@dataclasses.dataclass
class ConvertResult:
    """What :func:`convert` did: the plan (and its report), what was left out, and the totals.

    ``left_out``: ``(name, reason)`` for every checkpoint tensor not written: its default name when
    left out as optimizer state or bookkeeping, its output path when Orbax cannot store it (strings,
    zero-size tensors). ``out`` is None for a dry run.
    """

    plan: Plan
    left_out: list[tuple[str, str]]
    out: str | None
    tensors: int = 0
    bytes: int = 0
    seconds: float = 0.0
    bytes_read: int = 0

    @property
    def report(self) -> Any:
        return self.plan.report

    def summary(self) -> str:
        """One line: tensors, bytes, seconds, throughput (and where)."""
        if self.out is None:
            return f"dry run: {len(self.plan.entries)} tensors, {human_bytes(total_bytes(self.plan))} to write"
        return (f"converted {self.tensors} tensors, {human_bytes(self.bytes)} in {self.seconds:.1f} s "
                f"({human_rate(self.bytes, self.seconds)}) -> {self.out}")

    def share_summary(self) -> str:
        """One line: what this process read (its share, in a distributed conversion)."""
        import jax

        return (f"process {jax.process_index()}/{jax.process_count()}: read {human_bytes(self.bytes_read)} "
                f"in {self.seconds:.1f} s ({human_rate(self.bytes_read, self.seconds)})")

    def describe(self) -> str:
        """The plan (one line per leaf, with shape and dtype), the report, and what was left out."""
        lines = [f"{e.describe()}  {list(e.shape)} {np.dtype(e.dtype).name}" for e in self.plan.entries.values()]
        lines.append(self.plan.report.summary())
        lines += [f"  left out: {name} ({why})" for name, why in self.left_out]
        return "\n".join(lines)


def convert(ckpt: str | os.PathLike | Checkpoint, out: str | os.PathLike, *, mapping: Any = None,
            rules: Any = None, preset: str | None = None, transforms: Mapping[Any, Any] | None = None,
            dtype: Any = None, include_optimizer: bool = False, part_axis: Any = None, stack_axis: Any = None,
            names: str = "object", dry_run: bool = False, force: bool = False, progress: bool = False,
            distributed: bool | None = None, shardings: Any = None, mesh: Any = None, sharding_rules: Any = None,
            timeout: float = 600.0) -> ConvertResult:
    """Convert TensorFlow checkpoint ``ckpt`` into the new Orbax checkpoint ``out`` (a local directory or ``gs://``).

    ``mapping``, ``rules``, ``preset``, ``transforms``, ``part_axis``, ``stack_axis``: as for
    :func:`tf2flax.init_params` (see the module docstring for how the output tree follows from them). ``dtype``: cast floating
    tensors (not integers, bools, complex) to it, e.g. ``"bfloat16"``. ``include_optimizer``: keep optimizer
    state and bookkeeping. ``names``: how TF2 variables are named by default, ``"object"`` (object
    paths) or ``"full"`` (``full_name``, e.g. a Keras 3 layer path; see :mod:`tf2flax.naming`).
    ``dry_run``: plan and report only, write nothing (an existing ``out`` is fine). ``force``: replace an
    existing ``out`` (only once the new one is complete; on ``gs://``, which has no atomic rename,
    before writing), if it is an empty directory or an Orbax checkpoint tf2flax wrote; an ``out`` that
    is or holds the checkpoint or the current directory is always refused. ``progress``: a progress
    bar on a terminal.
    String and zero-size tensors, which Orbax cannot store, are left out with a warning.

    ``distributed``: this is one process of a ``jax.distributed`` program, and every process calls
    ``convert`` with the same arguments (None, the default: whether ``jax.distributed`` runs more than
    one process; ``False`` there is refused, as Orbax's save needs every process). Each reads only the
    regions its devices hold of the output leaves, sharded by ``shardings`` or ``sharding_rules`` over ``mesh`` (as for ``init_params``;
    by default each large leaf is split over all devices along its first axis that divides, and each
    other leaf read by one process: see :mod:`.distributed`), and
    Orbax's multi-process save writes them into one checkpoint, equal to a one-process convert's.
    If a process fails, every process raises the same :class:`~tf2flax.errors.DistributedError`
    (a process missing for ``timeout`` seconds is named) and nothing is committed. Before anything is
    written the processes compare digests of their plans, output paths and options: processes started
    with different arguments (another map or dtype) raise a DistributedError naming what differs.
    ``bytes_read`` and the progress bar are this process's; ``tensors`` and ``bytes`` the whole checkpoint's.

    Example::

        r = tf2flax.convert("/runs/tf1/model.ckpt-7", "/ckpts/out", mapping={"bert/": "params/"})
        r.report.unused          # checkpoint tensors the map did not cover
    """
    began = time.perf_counter()
    distributed = _distributed(distributed)
    team: Any = Solo()
    if distributed:
        from .distributed import Team

        team = Team(timeout)
    plan, left_out, ckpt, out_path = team.step("plan the conversion", lambda: _plan(
        ckpt, out, mapping, rules, preset, transforms, dtype, include_optimizer, part_axis, stack_axis, names,
        dry_run, force))
    if distributed:
        from .distributed import output_shardings

        team.agree({
            "the plan (--map, --preset, --dtype, --names)": "\n".join(
                [f"{e.describe()} {list(e.shape)} {np.dtype(e.dtype).name}" for _, e in sorted(plan.entries.items())]
                + [f"left out: {name} ({why})" for name, why in left_out]),
            "the output path (OUT)": str(out_path),
            "the options (--force, --include-optimizer, --dry-run)": f"{force} {include_optimizer} {dry_run}"})
        team.shardings, team.owners = team.step(
            "place the output", lambda: output_shardings(plan, shardings, mesh, sharding_rules))
        team.agree({"the placement (shardings, mesh, sharding_rules)": "\n".join(
            f"{path} {team.shardings[path]} {team.owners.get(path)}" for path in sorted(plan.entries))})
    result = ConvertResult(plan, left_out, None)
    if dry_run:
        return result
    meta = {"tf2flax": {"source": ckpt.path, "include_optimizer": include_optimizer}}
    before = ckpt.stats.bytes_read
    with contextlib.ExitStack() as stack:
        if distributed:
            from .distributed import wide_dtypes

            stack.enter_context(wide_dtypes())
        write = write_orbax_url if isinstance(out_path, str) else write_orbax
        result.tensors, result.bytes = write(plan, out_path, force=force, progress=progress,
                                             custom_metadata=meta, team=team)
    result.out, result.seconds = str(out_path), time.perf_counter() - began
    result.bytes_read = ckpt.stats.bytes_read - before
    return result


def check_conversion(ckpt: str | os.PathLike | Checkpoint, out: str | os.PathLike, **kwargs: Any) -> None:
    """Check what :func:`convert` checks before it reads any tensor (the checkpoint opens, the map fits it,
    ``out`` may be written), raising the same errors, without writing anything or joining other processes;
    ``kwargs``: those of :func:`convert` (``distributed``, placement and ``progress`` are not used).

    Example::

        check_conversion("/runs/bert/model.ckpt-1000", "/ckpts/bert", dtype="bfloat16")   # before a long wait
    """
    args = {"mapping": None, "rules": None, "preset": None, "transforms": None, "dtype": None,
            "include_optimizer": False, "part_axis": None, "stack_axis": None, "names": "object", "dry_run": False,
            "force": False}
    args.update((k, v) for k, v in kwargs.items() if k in args)
    given = ckpt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convert itself warns
        _, _, opened, _ = _plan(ckpt, out, args["mapping"], args["rules"], args["preset"], args["transforms"],
                                args["dtype"], args["include_optimizer"], args["part_axis"], args["stack_axis"],
                                args["names"], args["dry_run"], args["force"])
    if opened is not given:
        opened.close()


def _distributed(distributed: bool | None) -> bool:
    """Whether this conversion is distributed: as asked, else whether ``jax.distributed`` runs several
    processes; refused when asked not to be in a multi-process program (Orbax's save needs every process)."""
    import sys

    several = None
    if "jax" in sys.modules:
        from jax._src import distributed as jax_distributed

        if jax_distributed.global_state.client is not None:
            import jax

            several = (jax.process_index(), jax.process_count()) if jax.process_count() > 1 else None
    if distributed is None:
        return several is not None
    if not distributed and several is not None:
        from ..errors import DistributedError

        raise DistributedError(f"convert(distributed=False) in process {several[0]} of {several[1]} of a "
                               "jax.distributed program: Orbax's save needs every process; call convert with "
                               "distributed=True (or leave it out) in every process, with the same arguments")
    return distributed


def _auto_map(mapping: Any, transforms: Any) -> tuple[Any, Any]:
    """A reviewed :func:`tf2flax.suggest_mapping` result as a map; ``"auto"`` is refused (no model here)."""
    from ..mapping.auto import AutoMapping, as_auto

    if isinstance(mapping, AutoMapping):
        mapping.check()
        return mapping.mapping, {**(transforms or {}), **mapping.transforms}
    if as_auto(mapping) is not None:
        raise MappingError("convert has no model to infer a map for: infer it with tf2flax.suggest_mapping(ckpt, "
                           "params) (pass the result as mapping, or .save() it) or `python -m tf2flax suggest CKPT "
                           "TARGET -o map.yaml` and --map map.yaml")
    return mapping, transforms


def _plan(ckpt: Any, out: Any, mapping: Any, rules: Any, preset: Any, transforms: Any, dtype: Any,
          include_optimizer: bool, part_axis: Any, stack_axis: Any, names: str, dry_run: bool,
          force: bool) -> tuple[Plan, list[tuple[str, str]], Checkpoint, Any]:
    """The checked output path, the open checkpoint and the checked plan (and what it leaves out)."""
    if is_url(os.fspath(out)):
        check_output_url(out, force, dry_run=True)  # an unwritable scheme fails before the checkpoint opens
    check_part_axis(part_axis)
    mapping, transforms = _auto_map(mapping, transforms)
    given = [] if isinstance(ckpt, Checkpoint) or is_url(os.fspath(ckpt)) else [os.fspath(ckpt)]
    ckpt = ckpt if isinstance(ckpt, Checkpoint) else open_checkpoint(ckpt)
    if is_url(os.fspath(out)):
        out_path: Any = check_output_url(out, force, dry_run=dry_run, inputs=[ckpt.path])
    else:
        out_path = check_out(out, force, dry_run=dry_run, inputs=[*given, *checkpoint_files(ckpt)])
        note = None if dry_run else leftovers_note(out_path)
        if note:
            warnings.warn(note, ConvertWarning, stacklevel=5)  # the caller of convert()
    cast_to = float_dtype(dtype)
    named = preset_left_out(default_names(ckpt, include_optimizer, names), preset, include_optimizer)
    left_out = [(n.name, n.left_out) for n in named if n.left_out]
    if mapping is None and rules is None and preset is None and not transforms:
        plan = default_plan(ckpt, named, cast_to)
    else:
        plan = mapped_plan(ckpt, named, mapping, rules, preset, transforms, cast_to, part_axis, stack_axis)
    plan, unwritable = _drop_unwritable(plan)
    left_out += unwritable
    if not dry_run and not plan.entries:
        raise MappingError(f"{ckpt.path}: nothing to convert ({len(left_out)} tensor(s) left out, none mapped)")
    return plan, left_out, ckpt, out_path


def preset_left_out(named: list[DefaultName], preset: Any, include_optimizer: bool) -> list[DefaultName]:
    """``named`` with the tensors ``preset`` says are optimizer state (T5's Adafactor ``_slot_v``...,
    which default naming does not know) left out, unless ``include_optimizer``.

    Example::

        preset_left_out(default_names(ckpt), "t5x", False)     # 'encoder/.../q_slot_v' left out
    """
    from ..mapping import get_preset

    found = get_preset(preset) if preset is not None and not include_optimizer else None
    if found is None or found.skip is None:
        return named
    return [dataclasses.replace(n, left_out=OPTIMIZER) if n.left_out is None and
            any(found.skip(c) for c in (n.key, n.name, *n.aliases)) else n for n in named]


def _drop_unwritable(plan: Plan) -> tuple[Plan, list[tuple[str, str]]]:
    """Leave out what Orbax cannot store (strings, zero-size arrays), with a warning."""
    kinds: dict[str, list[str]] = {"string tensor": [], "zero-size tensor": []}
    entries = {}
    for path, e in plan.entries.items():
        if np.dtype(e.dtype).kind in "OSU":
            kinds["string tensor"].append(path)
        elif math.prod(e.shape) == 0:
            kinds["zero-size tensor"].append(path)
        else:
            entries[path] = e
    dropped = []
    for why, paths in kinds.items():
        if paths:
            warnings.warn(f"left out {len(paths)} {why}(s), which Orbax cannot store: {', '.join(paths)}",
                          ConvertWarning, stacklevel=6)  # the caller of convert()
            for p in paths:
                plan.report.matched.pop(p, None)
                plan.report.unused.append(plan.entries[p].source.describe())
                dropped.append((p, why))
    return Plan(entries, plan.report), dropped


__all__ = ["VALUE_KEY", "ConvertResult", "ConvertWarning", "check_conversion", "convert", "load_map_file",
           "preset_left_out", "settle_paths", "write_orbax"]
