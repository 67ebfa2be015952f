"""The assignment-map engine: TensorFlow's ``init_from_checkpoint`` semantics for Flax targets.

See the README's Mapping section for the syntax. The pipeline: checkpoint names (TF1 names; TF2 keys, object
paths, model paths and ``full_name``) -> preset renames -> user ``rules`` -> the assignment map, read
with TensorFlow's rules (or, without a map, every renamed name that is a target path) -> per-target
transforms and a final cast -> a validated :class:`~tf2flax.plan.Plan` and its report.

Example::

    from tf2flax.mapping import build_plan
    from tf2flax.targets import flatten_targets

    plan = build_plan(ckpt, {"old_scope_1/": "new_scope_1/"}, flatten_targets(params))
    print(plan.report.summary())
"""

from .build import MappingReport, build_plan, check_strict
from .presets import PRESETS, Preset, get_preset
from .rules import Rule, compile_rules

__all__ = ["MappingReport", "PRESETS", "Preset", "Rule", "build_plan", "check_strict", "compile_rules",
           "get_preset"]
