"""The plan of a conversion: which output leaf comes from which checkpoint tensor, with what steps.

There is no model, so the target leaves are derived from the checkpoint (see :mod:`tf2flax.conversion`),
then the mapping engine (:func:`tf2flax.mapping.build_plan`) builds and checks the plan.

Example::

    plan = default_plan(ckpt, default_names(ckpt, False, "object"), float_dtype("bfloat16"))
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from ..bundle import Checkpoint
from ..errors import MappingError
from ..naming import DefaultName
from ..plan import Cast, Plan, PlanEntry, TensorSource
from .tree import settle_paths


def default_plan(ckpt: Checkpoint, names: list[DefaultName], cast_to: np.dtype | None) -> Plan:
    """Every kept tensor at the path of its default name (settled), cast to ``cast_to`` if floating."""
    from ..mapping import MappingReport

    kept = [n for n in names if n.left_out is None]
    paths = settle_paths([n.name for n in kept])
    entries = {}
    for n in kept:
        source = TensorSource(ckpt, n.key)
        steps = (Cast(cast_to),) if cast_to is not None and is_float(source.dtype) else ()
        entries[paths[n.name]] = PlanEntry(paths[n.name], source, steps)
    report = MappingReport(matched={t: e.describe()[len(t) + 4:] for t, e in entries.items()},
                           skipped=sorted(n.name for n in names if n.left_out))
    return Plan(entries, report)


def mapped_plan(ckpt: Checkpoint, names: list[DefaultName], mapping: Any, rules: Any, preset: Any,
                transforms: Mapping[Any, Any] | None, cast_to: np.dtype | None, part_axis: Any) -> Plan:
    """The plan of a map, rules, preset or transforms: target leaves derived from the checkpoint."""
    from ..mapping import build_plan, compile_rules, get_preset
    from ..mapping.assignment import normalize
    from ..mapping.names import CheckpointNames
    from ..mapping.rules import rename
    from ..mapping.transforms import TransformSpecs, parse_spec
    from ..targets import TargetLeaf

    found = get_preset(preset)
    stages = ([found.rules] if found else []) + [compile_rules(rules)]

    def renamed(name: str) -> str | None:
        for stage in stages:
            name = rename(name, stage)
            if name is None:
                return None
        return name

    kept = [n for n in names if n.left_out is None]
    sources: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    if mapping is None:
        pairs = [(r, r, n.key) for n in kept if (r := renamed(n.name)) is not None]
        settled = settle_paths([p for _, p, _ in pairs])
        pairs = [(r, settled[p], key) for r, p, key in pairs]
        for _, path, key in pairs:
            sources[path] = (ckpt.shape(key), ckpt.dtype(key))
        mapping = [(r, path) for r, path, _ in pairs]
    else:
        resolver = CheckpointNames(ckpt, stages, None, part_axis)
        for key, target in sorted(normalize(mapping), key=lambda p: str(p[0])):
            sources.update(_targets_of(key, target, kept, renamed, resolver, ckpt))
    specs = TransformSpecs(transforms, _path_key)
    targets = {}
    for path, (shape, dtype) in sources.items():
        spec = specs.find(path)
        for step in parse_spec(spec, shape, dtype, repr(path)) if spec is not None else ():
            shape, dtype = step.out_shape(shape), step.out_dtype(dtype)
        if cast_to is not None and is_float(dtype):
            dtype = cast_to
        targets[path] = TargetLeaf(path, tuple(shape), np.dtype(dtype), None, None)
    return build_plan(ckpt, mapping, targets, rules=rules, preset=preset, transforms=transforms,
                      part_axis=part_axis)


def _targets_of(key: Any, target: Any, kept: list[DefaultName], renamed: Callable[[str], str | None],
                resolver: Any, ckpt: Checkpoint) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The output leaves one map entry defines: ``path -> (shape, dtype)`` of its source."""
    where = f"map entry {key!r}: {target!r}"
    if not isinstance(key, str) or not isinstance(target, str):
        raise MappingError(f"{where}: convert needs string checkpoint names and output paths (splitting a "
                           "tensor into a list of targets needs a model: use tf2flax.init_params)")
    if not key.endswith("/"):
        if target.endswith("/") or not target:
            raise MappingError(f"{where}: a tensor maps to a leaf path; to map a scope, end both sides with '/'")
        found = resolver.resolve(key)
        if found is None:
            raise MappingError(f"{where}: checkpoint {ckpt.path} has no tensor {key!r}.{resolver.suggest(key)}")
        return {target: (tuple(found.source.shape), found.source.dtype)}
    if "/" not in target:
        raise MappingError(f"{where}: a scope target ends with '/', e.g. '{target}/'")
    scope = target[: target.rindex("/")]
    out = {}
    for n in kept:
        for name in (n.name, *n.aliases):
            r = renamed(name)
            if r is not None and (key == "/" or (r.startswith(key) and len(r) > len(key))):
                rest = r if key == "/" else r[len(key):]
                out[f"{scope}/{rest}" if scope else rest] = (ckpt.shape(n.key), ckpt.dtype(n.key))
                break
    return out


def _path_key(key: Any) -> str:
    if not isinstance(key, str):
        raise MappingError(f"transforms keys are output paths or regexes (strings) in a conversion, got {key!r}")
    return key


def float_dtype(dtype: Any) -> np.dtype | None:
    """``dtype`` (a name or numpy dtype) as a floating numpy dtype; None stays None."""
    if dtype is None:
        return None
    import ml_dtypes  # noqa: F401  (registers bfloat16 and float8 names with numpy)

    try:
        found = np.dtype(dtype)
    except TypeError:
        raise MappingError(f"unknown dtype {dtype!r}") from None
    if not is_float(found):
        raise MappingError(f"dtype {found.name!r} is not a floating dtype (only floating tensors are cast)")
    return found


def is_float(dtype: Any) -> bool:
    """Whether ``dtype`` is a floating dtype, numpy's or ml_dtypes' (bfloat16, float8...)."""
    import ml_dtypes

    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return True
    try:
        ml_dtypes.finfo(dtype)
    except (ValueError, TypeError):
        return False
    return dtype.kind == "V"
