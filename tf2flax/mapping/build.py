"""``build_plan``: an assignment map, rules, preset and transforms -> a validated :class:`Plan`.

Everything is checked before any tensor data is read: names on both sides, shapes after transforms,
dtypes (a final cast to the target leaf's dtype is added where they differ; string/complex -> real is
an error). All problems are reported together, TensorFlow's first error first.

Example::

    plan = build_plan(ckpt, {"old_scope_1/": "new_scope_1/"}, flatten_targets(params))
    values = {t: e.read() for t, e in plan.entries.items()}
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import MappingError, clip
from ..plan import (Cast, Plan, PlanEntry, RegionSource, Report, Reshape, Source, Transform, Transpose, axis_groups,
                    can_cast)
from ..targets import TargetLeaf
from .assignment import Load, TargetVars, assign, auto_assign
from .auto import AutoMapping, as_auto, infer_mapping
from .hints import dtype_name, shape_hint
from .names import CheckpointNames, PartAxis, axis_for, check_part_axis
from .presets import Preset, get_preset
from .rules import RulesSpec, compile_rules
from .stacking import Fit, StackAxis, Stacking, check_stack_axis
from .transforms import TransformSpecs, parse_spec


@dataclasses.dataclass
class MappingReport(Report):
    """A :class:`Report` plus ``skipped`` (checkpoint tensors not counted as unused: optimizer state,
    bookkeeping, names dropped by a ``None`` rule) and ``notes`` (map entries that loaded nothing,
    overridden assignments, scopes read the TensorFlow way)."""

    skipped: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def summary(self, max_matched: int = 20) -> str:
        lines = [super().summary(max_matched)]
        if self.skipped:
            lines.append(f"  ({len(self.skipped)} optimizer/bookkeeping tensor(s) skipped)")
        lines += [f"  note:   {n}" for n in self.notes]
        return "\n".join(lines)


def build_plan(ckpt: Any, mapping: Any, targets: Mapping[str, TargetLeaf], *, rules: RulesSpec | None = None,
               preset: str | Preset | None = None, transforms: Mapping[Any, Any] | None = None,
               part_axis: PartAxis = None, stack_axis: StackAxis = None,
               order: Mapping[str, int] | None = None) -> Plan:
    """The validated plan that loads ``ckpt`` into ``targets`` as ``mapping`` says; reads no tensor data.

    ``mapping``: TensorFlow's assignment map (dict or list of pairs), or None to match every target
    path that is a (renamed) checkpoint name, or ``"auto"`` / an :class:`~tf2flax.mapping.auto.AutoMap`
    to infer it (see ``tf2flax.mapping.auto``; refused with a MappingError unless every leaf is decided).
    ``rules``/``preset`` rename checkpoint names first.
    ``transforms``: ``{target path or regex: spec}``. ``part_axis``: the axis of ``<var>/part_<n>``
    concatenations and splits (an int, or ``{var: axis}``), inferred from the shapes by default.
    ``stack_axis``: the new axis of ``{i}`` stacks (an int, or ``{target regex: int}``; the preset's,
    else 0). ``order``: target leaf path -> rank (an nnx.Module's attribute order), evidence for "auto".

    Example::

        plan = build_plan(ckpt, {"sequential/dense/": "params/Dense_0/"}, flatten_targets(variables),
                          preset="keras")
        print(plan.report.summary())
    """
    check_part_axis(part_axis)
    if isinstance(ckpt, str) or hasattr(ckpt, "__fspath__"):
        from .. import open_checkpoint

        ckpt = open_checkpoint(ckpt)
    hints = as_auto(mapping)
    if hints is not None:
        mapping = infer_mapping(ckpt, targets, hints, rules=rules, preset=preset, transforms=transforms,
                                part_axis=part_axis, order=order)
    auto_notes: list[str] = []
    if isinstance(mapping, AutoMapping):  # inferred here, or by suggest_mapping and reviewed
        mapping.check()
        auto_notes.append(mapping.note())
        mapping, transforms = mapping.mapping, {**(transforms or {}), **mapping.transforms}
    preset = get_preset(preset)
    stages = [preset.rules_for(list(ckpt.names))] if preset else []
    stages.append(compile_rules(rules))
    linen = any(p.split("/", 1)[0] == "params" for p in targets)
    collection = preset.collection if preset and linen else None
    names = CheckpointNames(ckpt, stages, collection, part_axis, scan=preset.scan if preset else (),
                            skip=preset.skip if preset else None)
    tvars = TargetVars(targets)
    specs = TransformSpecs(transforms, tvars.path_of)

    errors: list[str] = []
    notes: list[str] = auto_notes
    check_stack_axis(stack_axis)
    fit = fit_shape if preset and preset.fit else None
    stacking = Stacking(stack_axis if stack_axis is not None or not preset else preset.stack_axis, fit)
    loads = (auto_assign(names, tvars, errors, stacking) if mapping is None
             else assign(mapping, names, tvars, errors, notes, stacking))
    entries: dict[str, tuple[PlanEntry, Load]] = {}
    for load in loads:
        try:
            new = _entries(load, targets, specs, part_axis, fit)
        except MappingError as e:
            errors.append(str(e))
            continue
        for entry in new:
            old = entries.get(entry.target)
            if old is not None:
                notes.append(f"{entry.target!r}: {old[1].origin} is overridden by {load.origin}")
            entries[entry.target] = (entry, load)
    bad = specs.unmatched_keys([*targets, *tvars.bases.values()])
    errors += [f"transforms key {clip(str(k))} matches no target leaf.{tvars.suggest(k)}" for k in bad]
    if errors:
        head = errors[0] if len(errors) == 1 else f"{len(errors)} problems:\n- " + "\n- ".join(errors)
        raise MappingError(head)

    used = {k for _, load in entries.values() for k in load.resolved.keys}
    unused, skipped = names.unused(used)
    report = MappingReport(
        matched={t: e.describe()[len(t) + 4:] for t, (e, _) in sorted(entries.items())},
        unused=unused,
        unset=sorted(set(targets) - set(entries)),
        skipped=skipped,
        notes=notes,
    )
    return Plan({t: e for t, (e, _) in entries.items()}, report)


def check_strict(report: Report) -> None:
    """Raise :class:`MappingError` if ``report`` has unused checkpoint tensors or unset targets.

    Example::

        check_strict(build_plan(ckpt, None, targets).report)
    """
    if report.unused or report.unset:
        raise MappingError("strict loading failed: " + report.summary(max_matched=0))


@dataclasses.dataclass(frozen=True)
class TransformedSource:
    """A source seen through transforms: a partitioned variable's transforms, applied before the split."""

    entry: PlanEntry

    @property
    def shape(self) -> tuple[int, ...]:
        return self.entry.shape

    @property
    def dtype(self) -> np.dtype:
        return self.entry.dtype

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        return self.entry.read(index)

    def describe(self) -> str:
        return "(" + self.entry.describe()[len(self.entry.target) + 4:] + ")"


def fit_shape(source: Source, shape: tuple[int, ...], name: str) -> Source:
    """``source`` reshaped to ``shape`` when the two differ only by split or merged adjacent axes (a
    preset's ``fit``); else ``source`` as it is (a wrong shape is reported as a mismatch later)."""
    have = tuple(source.shape)
    groups = axis_groups(have, shape) if have != tuple(shape) else None
    if groups is None or any(len(ins) > 1 and len(outs) > 1 for ins, outs in groups):
        return source
    return TransformedSource(PlanEntry(name, source, (Reshape(tuple(shape), have),)))


def _entries(load: Load, targets: Mapping[str, TargetLeaf], specs: TransformSpecs,
             part_axis: PartAxis, fit: Fit | None = None) -> list[PlanEntry]:
    source = load.resolved.source
    if load.partition is None:
        leaf = targets[load.leaves[0]]
        steps = _transforms(specs, leaf.path, source)
        if fit is not None and not steps:
            source = fit(source, tuple(leaf.shape), load.resolved.name)
        return [_finish(leaf, source, steps, load)]
    if load.var is not None:
        steps = _transforms(specs, load.var, source)
        if steps:
            source = TransformedSource(PlanEntry(load.var, source, steps))
    pieces = [_piece_shape(targets[p], specs, load) for p in load.partition]
    what = f"{load.origin}: checkpoint tensor {load.resolved.name!r}"
    axis = split_axis(tuple(source.shape), pieces, axis_for(part_axis, load.var or load.resolved.name), what,
                      list(load.partition))
    out, offset = [], 0
    for path, shape in zip(load.partition, pieces):
        region = tuple(slice(offset, offset + shape[a]) if a == axis else slice(0, d) for a, d in enumerate(shape))
        offset += shape[axis]
        if path in load.leaves:
            piece = RegionSource(source, region)
            steps = () if load.var is not None else _transforms(specs, path, piece)
            out.append(_finish(targets[path], piece, steps, load))
    return out


def split_axis(full: tuple[int, ...], pieces: Sequence[tuple[int, ...]], axis: int | None, what: str,
               paths: list[str]) -> int:
    """The one axis along which ``pieces`` tile ``full`` (axis 0 when several would do)."""
    rank = len(full)
    fits = [a for a in range(rank)
            if all(len(p) == rank and all(p[d] == full[d] for d in range(rank) if d != a) for p in pieces)
            and sum(p[a] for p in pieces) == full[a]]
    if axis is not None:
        if axis % max(rank, 1) not in fits:
            raise MappingError(f"{what} {list(full)} cannot be split along axis {axis} into "
                               f"{[list(p) for p in pieces]} ({paths})")
        return axis % rank
    if not fits:
        raise MappingError(f"{what} has shape {list(full)}; the parts {paths} with shapes "
                           f"{[list(p) for p in pieces]} do not tile it along any one axis")
    return 0 if 0 in fits else fits[0]


def _transforms(specs: TransformSpecs, key: str, source: Source) -> tuple[Transform, ...]:
    spec = specs.find(key)
    if spec is None:
        return ()
    return parse_spec(spec, tuple(source.shape), source.dtype, repr(key))


def _piece_shape(leaf: TargetLeaf, specs: TransformSpecs, load: Load) -> tuple[int, ...]:
    """The shape a piece of a split tensor has before the leaf's own transforms (explicit lists only)."""
    spec = specs.find(leaf.path) if load.var is None else None
    if spec is None:
        return tuple(leaf.shape)
    shape = list(leaf.shape)
    provisional = parse_spec(spec, tuple(leaf.shape), leaf.dtype, repr(leaf.path))
    for t in reversed(provisional):
        if isinstance(t, Transpose):
            before = [0] * len(shape)
            for out_axis, in_axis in enumerate(t.perm):
                before[in_axis] = shape[out_axis]
            shape = before
        elif not isinstance(t, Cast):
            raise MappingError(f"{load.origin}: the transforms of {leaf.path!r}, one piece of a split tensor, "
                               "may only transpose and cast")
    return tuple(shape)


def _finish(leaf: TargetLeaf, source: Source, steps: tuple[Transform, ...], load: Load) -> PlanEntry:
    """The entry for ``leaf``, with its shape checked and a final cast to its dtype."""
    entry = PlanEntry(leaf.path, source, steps)
    label = source.describe()
    try:
        shape, dtype = entry.shape, entry.dtype
    except MappingError as e:
        raise MappingError(f"{load.origin}: target {leaf.path!r} from {label}: {e}") from None
    if tuple(shape) != tuple(leaf.shape):
        after = " after its transforms" if steps else ""
        raise MappingError(
            f"{load.origin}: shape mismatch: target {leaf.path!r} has shape {list(leaf.shape)}, checkpoint "
            f"tensor {label!r} has shape {list(shape)}{after}.{'' if steps else shape_hint(shape, leaf.shape)}")
    try:
        want = np.dtype(leaf.dtype)
    except TypeError:
        raise MappingError(f"{load.origin}: target {leaf.path!r} has dtype {leaf.dtype}, which cannot be "
                           "loaded from a checkpoint") from None
    if dtype != want:
        if not can_cast(dtype, want):
            raise MappingError(f"{load.origin}: cannot load {dtype_name(dtype)} tensor {label!r} into "
                               f"{leaf.path!r} ({dtype_name(want)}): no meaningful conversion")
        entry = PlanEntry(leaf.path, source, (*steps, Cast(want)))
    return entry
