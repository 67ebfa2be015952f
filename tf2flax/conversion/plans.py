"""The plan of a conversion: which output leaf comes from which checkpoint tensor, with what steps.

There is no model, so the target leaves are derived from the checkpoint (see :mod:`tf2flax.conversion`),
then the mapping engine (:func:`tf2flax.mapping.build_plan`) builds and checks the plan.

Example::

    plan = default_plan(ckpt, default_names(ckpt, False, "object"), float_dtype("bfloat16"))
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import numpy as np

from ..formats import Checkpoint
from ..errors import MappingError, clip, short_repr
from ..naming import DefaultName
from ..plan import Cast, Plan, PlanEntry, TensorSource
from .tree import check_path, check_tree, settle_paths


def default_plan(ckpt: Checkpoint, names: list[DefaultName], cast_to: np.dtype | None) -> Plan:
    """Every kept tensor at the path of its default name (settled), cast to ``cast_to`` if floating."""
    from ..mapping import MappingReport

    kept = [n for n in names if n.left_out is None]
    for n in kept:
        check_path(n.name, n.key, ckpt.path)
    paths = settle_paths([n.name for n in kept])
    check_tree([(paths[n.name], n.key) for n in kept], ckpt.path)
    entries = {}
    for n in kept:
        source = TensorSource(ckpt, n.key)
        steps = (Cast(cast_to),) if cast_to is not None and is_float(source.dtype) else ()
        entries[paths[n.name]] = PlanEntry(paths[n.name], source, steps)
    report = MappingReport(matched={t: e.describe()[len(t) + 4:] for t, e in entries.items()},
                           skipped=sorted(n.name for n in names if n.left_out))
    return Plan(entries, report)


def mapped_plan(ckpt: Checkpoint, names: list[DefaultName], mapping: Any, rules: Any, preset: Any,
                transforms: Mapping[Any, Any] | None, cast_to: np.dtype | None, part_axis: Any,
                stack_axis: Any = None) -> Plan:
    """The plan of a map, rules, preset or transforms: target leaves derived from the checkpoint.

    ``{i}`` stacks (in map keys, or stacking rules) define leaves with a layer axis, at ``stack_axis``
    (or the preset's), as long as the number of layers found.
    """
    from ..mapping import build_plan, compile_rules, get_preset
    from ..mapping.assignment import normalize
    from ..mapping.names import CheckpointNames
    from ..mapping.rules import rename_layer
    from ..mapping.stacking import Stacking, check_stack_axis
    from ..mapping.transforms import TransformSpecs, parse_spec
    from ..targets import TargetLeaf

    found = get_preset(preset)
    stages = ([found.rules_for(list(ckpt.names))] if found else []) + [compile_rules(rules)]
    check_stack_axis(stack_axis)
    stacking = Stacking(stack_axis if stack_axis is not None or not found else found.stack_axis)

    def renamed_layer(name: str) -> tuple[str | None, int | None]:
        layer = None
        for stage in stages:
            name, index = rename_layer(name, stage)
            if name is None:
                return None, None
            layer = index if index is not None else layer
        return name, layer

    def renamed(name: str) -> str | None:
        new, layer = renamed_layer(name)
        return new if layer is None else None

    kept = [n for n in names if n.left_out is None]
    leaves: list[tuple[str, str, tuple[tuple[int, ...], np.dtype]]] = []  # (path, source, (shape, dtype))
    if mapping is None:
        pairs, stacks = [], {}
        for n in kept:
            r, layer = renamed_layer(n.name)
            if r is None:
                continue
            check_path(r, n.key, ckpt.path)
            if layer is None:
                pairs.append((r, n.key))
            elif layer in stacks.setdefault(r, {}):
                raise MappingError(f"{ckpt.path}: checkpoint tensors {short_repr(stacks[r][layer])} and "
                                   f"{short_repr(n.key)} are both layer {layer} of {short_repr(r)}; rename one of them")
            else:
                stacks[r][layer] = n.key
        settled = settle_paths([r for r, _ in pairs] + list(stacks))
        leaves = [(settled[r], key, (ckpt.shape(key), ckpt.dtype(key))) for r, key in pairs]
        for name, layers in stacks.items():
            first = layers[min(layers)]
            leaves.append((settled[name], _layers_source(layers),
                           (_stacked_shape(ckpt.shape(first), len(layers), stacking, settled[name]), ckpt.dtype(first))))
        mapping = [(r, settled[r]) for r, _ in pairs] + [(name, settled[name]) for name in stacks]
    else:
        resolver = CheckpointNames(ckpt, stages, None, part_axis)
        for key, target in sorted(normalize(mapping), key=lambda p: str(p[0])):
            leaves += _targets_of(key, target, names, renamed, resolver, ckpt, stacking)
    check_tree(list(dict.fromkeys((path, source) for path, source, _ in leaves)), ckpt.path)
    sources = {path: shape_dtype for path, _, shape_dtype in leaves}
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
                      part_axis=part_axis, stack_axis=stack_axis)


def _stacked_shape(layer: tuple[int, ...], count: int, stacking: Any, path: str) -> tuple[int, ...]:
    """The shape of ``count`` layers of shape ``layer`` stacked at ``path``'s stack axis."""
    shape = list(layer)
    shape.insert(stacking.axis_for(path, len(layer) + 1), count)
    return tuple(shape)


def _layers_source(layers: dict[int, str]) -> str:
    """How a stacked leaf's source is named in messages: its first layer's tensor and the count."""
    return f"{layers[min(layers)]} (and {len(layers) - 1} more layers)"


Leaf = tuple[str, str, tuple[tuple[int, ...], np.dtype]]


def _targets_of(key: Any, target: Any, names: list[DefaultName], renamed: Callable[[str], str | None],
                resolver: Any, ckpt: Checkpoint, stacking: Any) -> list[Leaf]:
    """The output leaves one map entry defines: ``(path, source, (shape, dtype))``; ``names``: every
    default name, those left out included."""
    from ..mapping.stacking import LAYER

    kept = [n for n in names if n.left_out is None]
    where = f"map entry {short_repr(key)}: {short_repr(target)}"
    if not isinstance(key, str) or not isinstance(target, str):
        raise MappingError(f"{where}: convert needs string checkpoint names and output paths (splitting a "
                           "tensor into a list of targets needs a model: use tf2flax.init_params)")
    if LAYER in key:
        return _layer_targets(key, target, names, renamed, resolver, ckpt, stacking, where)
    if not key.endswith("/"):
        if target.endswith("/") or not target:
            raise MappingError(f"{where}: a tensor maps to a leaf path; to map a scope, end both sides with '/'")
        found = resolver.resolve(key)
        if found is None:
            raise MappingError(f"{where}: checkpoint {ckpt.path} has no tensor {clip(key)}.{resolver.suggest(key)}")
        check_path(target, key, ckpt.path)
        return [(target, ", ".join(found.keys), (tuple(found.source.shape), found.source.dtype))]
    if "/" not in target:
        raise MappingError(f"{where}: a scope target ends with '/', e.g. '{target}/'")
    scope = target[: target.rindex("/")]
    out = []
    for n in kept:
        for name in (n.name, *n.aliases):
            r = renamed(name)
            if r is not None and (key == "/" or (r.startswith(key) and len(r) > len(key))):
                rest = r if key == "/" else r[len(key):]
                path = f"{scope}/{rest}" if scope else rest
                check_path(path, n.key, ckpt.path)
                out.append((path, n.key, (ckpt.shape(n.key), ckpt.dtype(n.key))))
                break
    if not out:
        raise MappingError(f"{where}: {_no_tensor_under(key, names, renamed, ckpt)}")
    return out


def _no_tensor_under(key: str, names: list[DefaultName], renamed: Callable[[str], str | None],
                     ckpt: Checkpoint) -> str:
    """Why scope ``key`` of a map entry gives no leaf (as TensorFlow's ``init_from_checkpoint`` refuses a
    checkpoint name it cannot find), with the closest scopes. Checked for every entry, so that a typo in
    one entry of many is never a silent loss of its tensors."""
    from ..mapping.hints import close_matches

    scopes: set[str] = set()
    left_out = False
    for n in names:
        for name in (n.name, *n.aliases):
            r = renamed(name)
            if r is None:
                continue
            if n.left_out is not None:
                left_out = left_out or (r.startswith(key) and len(r) > len(key))
                continue
            at = r.find("/")
            while at > 0 and len(scopes) < 100_000:
                scopes.add(r[: at + 1])
                at = r.find("/", at + 1)
    why = (" (the tensors there are optimizer state or bookkeeping, left out unless include_optimizer=True, "
           "--include-optimizer)" if left_out else "")
    return f"checkpoint {ckpt.path} has no tensor under scope {clip(key)}{why}.{close_matches(key, sorted(scopes))}"


def _layer_targets(key: str, target: str, names: list[DefaultName], renamed: Callable[[str], str | None],
                   resolver: Any, ckpt: Checkpoint, stacking: Any, where: str) -> list[Leaf]:
    """The output leaves of a ``{i}`` entry: one per layer (``{i}`` on both sides) or stacked."""
    kept = [n for n in names if n.left_out is None]
    from ..mapping.rules import layer_index
    from ..mapping.stacking import LAYER, layer_matches, split_layer

    found = layer_matches(key, resolver.names(), where, scope=key.endswith("/"))
    if not found:
        raise MappingError(f"{where}: no checkpoint name matches {key!r}.{resolver.suggest(key)}")
    if LAYER in target:
        out = []
        for i, text in found.items():
            out += _targets_of(key.replace(LAYER, text), target.replace(LAYER, str(i)), names, renamed,
                               resolver, ckpt, stacking)
        return out
    if not key.endswith("/"):
        first_key = key.replace(LAYER, found[min(found)])
        first = resolver.resolve(first_key).source
        check_path(target, first_key, ckpt.path)
        return [(target, _layers_source({i: key.replace(LAYER, t) for i, t in found.items()}),
                 (_stacked_shape(tuple(first.shape), len(found), stacking, target), first.dtype))]
    before, after = split_layer(key, where)
    tail = re.compile(r"(\d+)" + re.escape(after) + r"(.+)")
    scope = target[: target.rindex("/")] if "/" in target else ""
    rests: dict[str, dict[int, str]] = {}
    for n in kept:  # as for scopes: the tensors convert keeps (no optimizer state)
        for name in (n.name, *n.aliases):
            r = renamed(name)
            m = tail.fullmatch(r, len(before)) if r is not None and r.startswith(before) else None
            if m:
                rests.setdefault(m.group(2), {})[layer_index(m.group(1), r)] = r
                break
    out = []
    for rest, layers in rests.items():
        path = f"{scope}/{rest}" if scope else rest
        check_path(path, layers[min(layers)], ckpt.path)
        first = resolver.resolve(layers[min(layers)]).source
        out.append((path, _layers_source(layers), (_stacked_shape(tuple(first.shape), len(layers), stacking, path),
                                                   first.dtype)))
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
