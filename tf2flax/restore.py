"""``init_params``: load a TensorFlow checkpoint into a Flax parameter tree, sharded.

Example::

    abstract = jax.eval_shape(model.init, rng, x)          # nothing allocated yet
    params = tf2flax.init_params("/runs/bert", {"bert/encoder/": "params/encoder/"}, abstract,
                                 preset="keras", mesh=mesh, sharding_rules=[(r"kernel$", P(None, "model"))])
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Mapping, Sequence

from jax.sharding import Mesh

from .formats import Checkpoint, open_checkpoint
from .mapping import build_plan, check_strict
from .mapping.auto import AutoMap, AutoMapping, as_auto, infer_mapping
from .mapping.auto.candidates import attribute_order
from .materialize import DEFAULT_BYTES_IN_FLIGHT, LoadStats, materialize, planned_bytes
from .plan import Plan, Report
from .progress import ByteProgress
from .sharding import ShardingRules, check_sharding, resolve_shardings
from .targets import flatten_targets, unflatten_targets


@dataclasses.dataclass
class LoadResult:
    """What ``init_params(..., return_report=True)`` returns beside the params."""

    plan: Plan
    stats: LoadStats

    @property
    def report(self) -> Report:
        return self.plan.report


def as_checkpoint(ckpt: str | os.PathLike | Checkpoint) -> Checkpoint:
    """An open checkpoint from a path, URL, or an already open one."""
    return ckpt if isinstance(ckpt, Checkpoint) else open_checkpoint(ckpt)


def suggest_mapping(ckpt: str | os.PathLike | Checkpoint, params: Any, hints: Any = None, *, rules: Any = None,
                    preset: Any = None, transforms: Mapping[Any, Any] | None = None,
                    part_axis: int | Mapping[str, int] | None = None) -> AutoMapping:
    """The map ``mapping="auto"`` would use, without loading: every decision with its evidence and
    confidence, the undecided targets and the unused checkpoint layers. ``hints``: an
    :class:`~tf2flax.mapping.auto.AutoMap` (pinned map entries, targets to leave unset), or map
    entries alone (a dict or a list of pairs).

    Example::

        auto = tf2flax.suggest_mapping("/runs/bert", nnx.state(model))
        print(auto.summary())
        auto.save("map.yaml")          # then: python -m tf2flax convert ... --map map.yaml
    """
    hints = as_auto("auto" if hints is None else hints) or AutoMap(map=hints)
    return infer_mapping(as_checkpoint(ckpt), flatten_targets(params), hints, rules=rules, preset=preset,
                         transforms=transforms, part_axis=part_axis, order=attribute_order(params))


def plan_params(ckpt: str | os.PathLike | Checkpoint, mapping: Any, params: Any, **options: Any) -> Plan:
    """Validate a whole load without reading tensor data: ``init_params(..., dry_run=True)``.

    Example::

        plan = tf2flax.plan_params(path, {"old/": "params/"}, abstract_params)
        print(plan.report.summary())
    """
    return init_params(ckpt, mapping, params, dry_run=True, **options)


def init_params(
    ckpt: str | os.PathLike | Checkpoint,
    mapping: Mapping[str, Any] | Sequence[tuple[str, Any]] | None,
    params: Any,
    *,
    rules: Any = None,
    preset: Any = None,
    transforms: Mapping[Any, Any] | None = None,
    part_axis: int | Mapping[str, int] | None = None,
    stack_axis: int | Mapping[str, int] | None = None,
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
    """``params`` with the leaves ``mapping`` names loaded from ``ckpt``, placed with their shardings.

    ``mapping`` follows ``tf.compat.v1.train.init_from_checkpoint``'s assignment map (see the
    README's Mapping section), or is ``"auto"`` (inferred, never guessed: see docs/automap.md);
    ``rules``/``preset``/``transforms`` go beyond it, and ``{i}`` in a
    map key stacks per-layer tensors along ``stack_axis`` (see ``tf2flax.mapping.stacking``). Leaves are placed
    with the sharding each target carries, or ``shardings`` (pytree, dict by path, or function),
    or ``sharding_rules`` [(regex, PartitionSpec)] over ``mesh``; each process reads only the
    regions its devices hold. The whole plan is validated before any data is read.

    ``dry_run=True`` returns the validated :class:`Plan` and reads nothing; ``report=True``
    prints the matched/unused/unset report to stderr; ``return_report=True`` returns
    ``(params, LoadResult)``. ``progress`` shows a bytes/ETA bar when stderr is a terminal.

    Example::

        params = tf2flax.init_params("/tmp/model.ckpt", {"old_scope_1/": "params/new_scope_1/"}, params)
    """
    ckpt = as_checkpoint(ckpt)
    targets = flatten_targets(params)
    plan = build_plan(ckpt, mapping, targets, rules=rules, preset=preset, transforms=transforms, part_axis=part_axis,
                      stack_axis=stack_axis, order=attribute_order(params) if as_auto(mapping) else None)
    if strict:
        check_strict(plan.report)
    placement = resolve_shardings(targets, shardings, mesh=mesh, rules=sharding_rules)
    for path, entry in plan.entries.items():
        if path in placement:
            check_sharding(path, entry.shape, placement[path])
    if report:
        print(plan.report.summary(), file=sys.stderr)
    if dry_run:
        return plan
    before = ckpt.stats.bytes_read
    with ByteProgress(planned_bytes(plan, placement), progress, description="loading") as bar:
        values, stats = materialize(plan, placement, bytes_in_flight=bytes_in_flight,
                                    on_progress=lambda target, nbytes: bar.advance(nbytes, description=target))
    stats.bytes_read = ckpt.stats.bytes_read - before
    result = unflatten_targets(params, values)
    return (result, LoadResult(plan, stats)) if return_report else result
