"""``init_opt_state``: TensorFlow optimizer slots into an optax optimizer state, sharded.

Each parameter's slots follow the parameter: the same assignment map, rules, preset and
transforms that loaded it build its load plan, and each checkpoint tensor in that plan is swapped
for the matching slot (``<var>/Adam`` for ``<var>``), so a transposed kernel gets transposed moments
and a partitioned variable's slots are joined like it. Moments are placed like their parameters and
read region by region, as ``init_params`` reads parameters.

Example::

    tx = optax.adam(1e-4)
    opt_state, report = tf2flax.init_opt_state(ckpt, {"bert/": "params/bert/"}, params, tx.init(params),
                                               return_report=True)
    print(report.summary())
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from ..formats import Checkpoint
from ..errors import MappingError
from ..mapping import build_plan
from ..materialize import DEFAULT_BYTES_IN_FLIGHT, LoadStats, materialize, planned_bytes
from ..plan import Cast, Plan, PlanEntry, TensorSource, can_cast
from ..progress import ByteProgress
from ..restore import as_checkpoint
from ..sharding import ShardingRules, check_sharding, keypath_str, resolve_shardings
from ..targets import TargetLeaf, flatten_targets, unflatten_targets
from .counts import check_count_fits, step_count
from .follow import Scale, ValueSource, rebase
from .slots import SlotKey, Slots, find_slots, strip_value_suffix

_SLOT_STATES = (optax.ScaleByAdamState, optax.TraceState, optax.FactoredState)
# a callable hyperparameter of inject_hyperparams keeps its own step count (optax has no public name for it)
_WRAPPED_SCHEDULE = getattr(getattr(optax.schedules, "_inject", None), "WrappedScheduleState", None)
_COUNTERS = {optax.ScaleByScheduleState: "count", optax.InjectHyperparamsState: "count",
             optax.InjectStatefulHyperparamsState: "count", optax.MultiStepsState: "gradient_step",
             **({_WRAPPED_SCHEDULE: "count"} if _WRAPPED_SCHEDULE else {})}
_NODES = (*_SLOT_STATES, *_COUNTERS)
_STATE_NAMES = {optax.ScaleByAdamState: "ScaleByAdamState (adam, adamw)",
                optax.TraceState: "TraceState (sgd with momentum)",
                optax.FactoredState: "FactoredState (adafactor)"}
_NEEDS = {optax.ScaleByAdamState: {"mu", "nu"}, optax.TraceState: {"trace", "velocity"},
          optax.FactoredState: {"vr", "vc", "v"}}


@dataclasses.dataclass
class OptStateReport:
    """What ``init_opt_state`` loaded.

    ``family``: the slot family found (see :mod:`tf2flax.optimizer.slots`); ``count``: the step
    count set (None if unknown) and ``count_source`` where it came from; ``params``: parameter path
    -> {state leaf: slot tensor}; ``unused``: slot tensors no state leaf took; ``unset``: state
    leaves left as they were; ``notes``; ``stats``: what was read.
    """

    family: str
    description: str
    count: int | None
    count_source: str
    params: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    unused: list[str] = dataclasses.field(default_factory=list)
    unset: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    stats: LoadStats = dataclasses.field(default_factory=LoadStats)

    def summary(self) -> str:
        n = sum(len(s) for s in self.params.values())
        lines = [f"optimizer slots: {self.description}",
                 f"count: {self.count if self.count is not None else 'not set'} ({self.count_source})",
                 f"{len(self.params)} parameter(s) got {n} slot(s), {len(self.unused)} slot tensor(s) unused, "
                 f"{len(self.unset)} state leaf/leaves unset"]
        lines += [f"  unused: {u}" for u in self.unused]
        lines += [f"  unset:  {u}" for u in self.unset]
        lines += [f"  note:   {u}" for u in self.notes]
        return "\n".join(lines)


def init_opt_state(
    ckpt: str | os.PathLike | Checkpoint,
    mapping: Mapping[str, Any] | Sequence[tuple[str, Any]] | None,
    params: Any,
    opt_state: Any,
    *,
    rules: Any = None,
    preset: Any = None,
    transforms: Mapping[Any, Any] | None = None,
    part_axis: int | Mapping[str, int] | None = None,
    stack_axis: int | Mapping[str, int] | None = None,
    family: str | None = None,
    count: int | None = None,
    b1: float | None = None,
    learning_rate: float | None = None,
    strict: bool = False,
    dry_run: bool = False,
    report: bool = False,
    return_report: bool = False,
    shardings: Any = None,
    mesh: Mesh | None = None,
    sharding_rules: ShardingRules | None = None,
    bytes_in_flight: int = DEFAULT_BYTES_IN_FLIGHT,
    progress: bool = True,
) -> Any:
    """``opt_state`` with its moments and step count loaded from the optimizer slots of ``ckpt``.

    ``mapping`` and ``rules``/``preset``/``transforms``/``part_axis``/``stack_axis`` are those of the ``init_params``
    call that loaded ``params``; so are ``shardings``/``mesh``/``sharding_rules``, which place each
    moment like its parameter (otherwise a leaf keeps the sharding it carries). Filled: every
    ``ScaleByAdamState`` (``count``, ``mu``, ``nu``), ``TraceState`` and ``FactoredState`` in the
    state, also inside ``chain``/``inject_hyperparams``/``MultiSteps``, whose counters
    (``InjectHyperparamsState.count``, ``MultiStepsState.gradient_step``, ``ScaleByScheduleState.count``)
    and the counts of ``inject_hyperparams``' schedules get the step count too.

    ``family`` picks a slot family when a checkpoint has several; ``count`` overrides the step count,
    which is otherwise the iteration counter, or for TF1 Adam ``beta1_power`` = b1^(count+1) when
    ``b1`` is given (or found in ``inject_hyperparams``). ``learning_rate`` converts Keras SGD's
    momentum (which holds ``-lr * trace``) when the checkpoint stores no learning rate.
    ``strict=True`` fails on unused slots or unset state leaves. ``dry_run=True`` validates everything
    and returns the :class:`OptStateReport` without reading any slot. ``return_report=True`` returns
    ``(opt_state, OptStateReport)``; ``report=True`` prints its summary to stderr.

    Example::

        opt_state = tf2flax.init_opt_state("/runs/bert/model.ckpt-1000", {"bert/": "params/bert/"},
                                           params, optax.adamw(1e-4).init(params))
    """
    ckpt = as_checkpoint(ckpt)
    param_targets = flatten_targets(params)
    plan = build_plan(ckpt, mapping, param_targets, rules=rules, preset=preset, transforms=transforms,
                      part_axis=part_axis, stack_axis=stack_axis)
    slots = find_slots(ckpt, family)
    nodes = _find_nodes(opt_state)
    slot_nodes = [(p, n) for p, n in nodes if isinstance(n, _SLOT_STATES)]
    if not slot_nodes:
        raise MappingError("the optimizer state holds no ScaleByAdamState, TraceState or FactoredState to load "
                           f"{slots.description} slots into")
    for path, node in slot_nodes:
        _check_family(slots, path, node)
    step, source, notes = step_count(ckpt, slots, count, b1 if b1 is not None else _hyperparam(nodes, "b1"))
    state_targets = flatten_targets(opt_state)
    param_placement = resolve_shardings(param_targets, shardings, mesh=mesh, rules=sharding_rules)
    builder = _Builder(ckpt, slots, plan, state_targets, param_placement, learning_rate)
    for path, node in nodes:
        builder.add_node(path, node, step, source)
    rep = OptStateReport(slots.family, slots.description, step, source, builder.params,
                         sorted(strip_value_suffix(k) for k in slots.slot_keys() - builder.used),
                         sorted(builder.unset), notes)
    if strict and (rep.unused or rep.unset):
        raise MappingError("strict optimizer state loading failed: " + rep.summary())
    state_plan = Plan(builder.entries, plan.report)
    for path, entry in state_plan.entries.items():
        if path in builder.placement:
            check_sharding(path, entry.shape, builder.placement[path])
    if report:
        print(rep.summary(), file=sys.stderr)
    if dry_run:
        return rep
    before = ckpt.stats.bytes_read
    with ByteProgress(planned_bytes(state_plan, builder.placement), progress, description="optimizer state") as bar:
        values, rep.stats = materialize(state_plan, builder.placement, bytes_in_flight=bytes_in_flight,
                                        on_progress=lambda target, nbytes: bar.advance(nbytes, description=target))
    rep.stats.bytes_read = ckpt.stats.bytes_read - before
    result = unflatten_targets(opt_state, values)
    return (result, rep) if return_report else result


def _find_nodes(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(path, node) for every optax state this module fills, wrappers' inner states included."""
    found = []
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, _NODES))[0]
    for keypath, x in leaves:
        if not isinstance(x, _NODES):
            continue
        path = _join(prefix, keypath_str(keypath))
        found.append((path, x))
        if isinstance(x, tuple(_COUNTERS)):
            for field in x._fields:
                found += _find_nodes(getattr(x, field), _join(path, field))
    return found


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _hyperparam(nodes: list[tuple[str, Any]], name: str) -> float | None:
    for _, node in nodes:
        hyper = getattr(node, "hyperparams", None)
        if isinstance(hyper, Mapping) and name in hyper:
            return float(np.asarray(hyper[name]))
    return None


def _check_family(slots: Slots, path: str, node: Any) -> None:
    kind = type(node)
    if not slots.roles & _NEEDS[kind]:
        raise MappingError(f"the checkpoint holds {slots.description} slots, but the optimizer state at "
                           f"{path or '<root>'!r} is a {_STATE_NAMES[kind]}: they do not match; build the optax "
                           f"optimizer that matches the checkpoint's ({_suggest(slots)})")


def _suggest(slots: Slots) -> str:
    roles = slots.roles
    if roles & {"mu", "nu"}:
        return "optax.adam / optax.adamw"
    if roles & {"trace", "velocity"}:
        return "optax.sgd(learning_rate, momentum=...)"
    return "optax.adafactor"


class _Builder:
    """Plan entries and placements for the state leaves, node by node."""

    def __init__(self, ckpt: Any, slots: Slots, plan: Plan, targets: Mapping[str, TargetLeaf],
                 param_placement: Mapping[str, Sharding], learning_rate: float | None) -> None:
        self.ckpt, self.slots, self.plan, self.targets = ckpt, slots, plan, targets
        self.param_placement = param_placement
        self.learning_rate = learning_rate
        self.entries: dict[str, PlanEntry] = {}
        self.placement: dict[str, Sharding] = {p: t.sharding for p, t in targets.items() if t.sharding is not None}
        self.params: dict[str, dict[str, str]] = {}
        self.used: set[str] = set()
        self.unset: set[str] = set()
        self.errors: list[str] = []
        meshes = [s.mesh for s in param_placement.values() if isinstance(s, NamedSharding)]
        self.mesh = meshes[0] if meshes else None

    def add_node(self, path: str, node: Any, step: int | None, source: str) -> None:
        if isinstance(node, tuple(_COUNTERS)):
            self._count(_join(path, _COUNTERS[type(node)]), step, source)
            return
        fields = [f for f in node._fields if f != "count"]
        if "count" in node._fields:
            self._count(_join(path, "count"), step, source)
        members = {f: flatten_targets(getattr(node, f)) for f in fields}
        for param in sorted(self.plan.entries):
            leaves = {f: _join(path, f, param) for f in fields if param in members[f]}
            if leaves:
                self._param(node, param, leaves)
        placeholders = self._fill_placeholders(node, path)
        for f in fields:
            self.unset |= {_join(path, f, p) for p in members[f]} - set(self.entries) - placeholders
        if self.errors:
            head = self.errors[0] if len(self.errors) == 1 else (
                f"{len(self.errors)} problems:\n- " + "\n- ".join(self.errors))
            raise MappingError(head)

    def _fill_placeholders(self, node: Any, path: str) -> set[str]:
        """Adafactor's (1,)-shaped stand-ins (v for factored parameters, v_row/v_col for the others), set to
        zeros and placed like the count, so that an abstract state (``jax.eval_shape``) comes out whole."""
        if not isinstance(node, optax.FactoredState):
            return set()
        out = set()
        for f in ("v_row", "v_col", "v"):
            out |= {_join(path, f, p) for p, leaf in flatten_targets(getattr(node, f)).items() if leaf.shape == (1,)}
        for p in out - set(self.entries):
            leaf = self.targets[p]
            self._value(p, ValueSource(np.zeros(leaf.shape, np.dtype(leaf.dtype)), "placeholder zeros"))
        return out

    def _count(self, path: str, step: int | None, source: str) -> None:
        leaf = self.targets.get(path)
        if leaf is None:
            return
        if step is None:
            self.unset.add(path)
            return
        check_count_fits(step, leaf.dtype, path, source)
        value = np.asarray(step, dtype=np.dtype(leaf.dtype))
        self._value(path, ValueSource(value, f"step {step} ({source})"))

    def _value(self, path: str, source: ValueSource) -> None:
        """A leaf set from a known value, replicated over the parameters' mesh unless it carries a sharding
        over several devices (``tx.init`` outside ``jit`` puts scalars on one device)."""
        self.entries[path] = PlanEntry(path, source)
        own = self.targets[path].sharding
        if self.mesh is not None and (own is None or len(own.device_set) == 1):
            self.placement[path] = NamedSharding(self.mesh, PartitionSpec())

    def _param(self, node: Any, param: str, leaves: dict[str, str]) -> None:
        entry = self.plan.entries[param]
        if isinstance(node, optax.FactoredState):
            self._factored(param, entry, leaves)
            return
        for field, path in leaves.items():
            if field == "trace" and "velocity" in self.slots.roles:
                self._moment(param, entry, "velocity", path, -1.0 / self._learning_rate())
            elif field in ("mu", "nu", "trace"):
                self._moment(param, entry, field, path, None)

    def _learning_rate(self) -> float:
        if self.learning_rate is not None:
            return float(self.learning_rate)
        if self.slots.learning_rate:
            return float(np.asarray(self.ckpt.read(self.slots.learning_rate)))
        raise MappingError(f"{self.slots.description}: Keras SGD's momentum slot holds -learning_rate x the "
                           "trace, and the checkpoint stores no learning rate: pass learning_rate=...")

    def _slot(self, key: str, role: str, param: str) -> SlotKey:
        slot = self.slots.by_param.get(key, {}).get(role)
        if slot is None:
            have = self.slots.by_param.get(key)
            found = f"it has {sorted(have)}" if have else "it has no slots"
            raise MappingError(f"parameter {param!r} is loaded from {strip_value_suffix(key)!r}, which has no "
                               f"{role!r} slot in the checkpoint's {self.slots.description} ({found}); leave "
                               "the parameter out of the mapping, or load the state with another optimizer")
        return slot

    def _moment(self, param: str, entry: PlanEntry, role: str, path: str, scale: float | None) -> None:
        try:
            source = rebase(entry.source, lambda key: self._slot(key, role, param), self.used)
        except MappingError as e:
            self.errors.append(str(e))
            return
        steps = tuple(t for t in entry.transforms if not isinstance(t, Cast))
        if scale is not None:
            steps += (Scale(scale),)
        self._finish(param, path, source, steps)
        if path in self.entries and param in self.param_placement:
            self.placement[path] = self.param_placement[param]

    def _finish(self, param: str, path: str, source: Any, steps: tuple) -> None:
        leaf = self.targets[path]
        entry = PlanEntry(path, source, steps)
        if tuple(entry.shape) != tuple(leaf.shape):
            self.errors.append(f"state leaf {path!r} has shape {list(leaf.shape)}, but the slot "
                               f"{source.describe()!r} of parameter {param!r} gives {list(entry.shape)}")
            return
        want = np.dtype(leaf.dtype)
        if entry.dtype != want:
            if not can_cast(entry.dtype, want):
                self.errors.append(f"cannot load {entry.dtype} slot {source.describe()!r} into {path!r} ({want})")
                return
            entry = PlanEntry(path, source, (*steps, Cast(want)))
        self.entries[path] = entry
        self.params.setdefault(param, {})[path] = source.describe()

    def _factored(self, param: str, entry: PlanEntry, leaves: dict[str, str]) -> None:
        """Adafactor's second moment: ``v`` (full shape, follows the parameter like any moment), or
        ``v_row``/``v_col`` (one axis reduced each; parameters read whole from one tensor only)."""
        shapes = {f: self.targets[p].shape for f, p in leaves.items()}
        keys: list[str] = []
        rebase(entry.source, lambda k: keys.append(k) or k, set())
        have = {role for k in keys for role in self.slots.by_param.get(k, {})} & {"vr", "vc", "v"}
        if not have:
            self.errors.append(f"parameter {param!r} is loaded from {', '.join(map(strip_value_suffix, keys))}, "
                               "which has no Adafactor slots (<var>_slot_vr/_slot_vc or <var>_slot_v) in the "
                               "checkpoint")
            return
        factored_state = shapes.get("v") == (1,) and shapes.get("v_row") != (1,)
        factored_ckpt = bool(have & {"vr", "vc"})
        if factored_state != factored_ckpt:
            kind = lambda f: "factored (v_row/v_col)" if f else "unfactored (full v)"  # noqa: E731
            self.errors.append(
                f"parameter {param!r} of shape {list(entry.shape)}: the checkpoint's Adafactor second moment is "
                f"{kind(factored_ckpt)} but the optax state's is {kind(factored_state)}; match factored= and "
                "min_dim_size_to_factor= to the TF optimizer's")
            return
        if not factored_ckpt:
            self._moment(param, entry, "v", leaves["v"], None)
            return
        if not (isinstance(entry.source, TensorSource) and all(isinstance(t, Cast) for t in entry.transforms)):
            self.errors.append(f"parameter {param!r}: factored Adafactor slots are loaded only for parameters read "
                               f"whole from one tensor, without transforms (it comes from {entry.describe()})")
            return
        slots = self.slots.by_param[entry.source.name]
        by_removed = _mtf_removed(entry.shape, slots, self.ckpt)
        for field, opt_axis in (("v_row", _optax_axes(entry.shape)[1]), ("v_col", _optax_axes(entry.shape)[0])):
            slot = by_removed.get(opt_axis)
            if slot is None:
                self.errors.append(f"parameter {param!r} of shape {list(entry.shape)}: optax reduces axis "
                                   f"{opt_axis} for {field}, Mesh-TF's slots reduce axes {sorted(by_removed)}")
                continue
            self.used.add(slot)
            self._finish(param, leaves[field], TensorSource(self.ckpt, slot), ())
            sharding = self.param_placement.get(param)
            if isinstance(sharding, NamedSharding) and leaves[field] in self.entries:
                spec = tuple(sharding.spec) + (None,) * (len(entry.shape) - len(sharding.spec))
                self.placement[leaves[field]] = NamedSharding(
                    sharding.mesh, PartitionSpec(*(s for i, s in enumerate(spec) if i != opt_axis)))

def _optax_axes(shape: tuple[int, ...]) -> tuple[int, int]:
    """(d1, d0): optax's two largest axes (d0 the largest; ties go to the later axis)."""
    order = np.argsort(shape)
    return int(order[-2]), int(order[-1])


def _mtf_removed(shape: tuple[int, ...], have: Mapping[str, str], ckpt: Any) -> dict[int, str]:
    """{axis the slot reduces: slot key} for Mesh-TF's ``_slot_vr`` (largest axis) / ``_slot_vc`` (second)."""
    ranked = sorted(range(len(shape)), key=lambda a: -shape[a])
    out = {}
    for role, axis in (("vr", ranked[0]), ("vc", ranked[1])):
        key = have.get(role)
        if isinstance(key, str) and tuple(ckpt.shape(key)) == tuple(d for i, d in enumerate(shape) if i != axis):
            out[axis] = key
    return out
