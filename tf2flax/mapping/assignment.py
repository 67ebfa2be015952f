"""TensorFlow's ``init_from_checkpoint`` rules, applied to the leaves of a Flax tree.

This is ``_init_from_checkpoint`` (``tensorflow/python/training/checkpoint_utils.py``) with target
variables replaced by target leaves:

- Entries run in order of their checkpoint name (a stable sort, so list-form duplicates keep their
  order); when two entries load the same leaf, the later one wins, as in TensorFlow.
- A target that is a leaf, a ``<var>`` whose ``<var>/part_<n>`` leaves exist, an ``nnx.Variable``
  handle, or a list of leaves/handles (one partitioned variable) loads the named checkpoint tensor.
- Any other string target is a scope: everything before its last ``/`` (``'/'`` means all leaves).
  The checkpoint key must then end with ``/``. Each leaf whose path starts with ``scope + '/'``
  (``/part_<n>`` suffix stripped) loads ``key + rest-of-path`` (``key`` ``'/'`` means the root).
- Beyond TensorFlow: ``{i}`` in a checkpoint name stacks layers or renames them layer by layer (see
  ``stacking.py``).
- Divergence: a scope target with no ``/`` at all (``'foo'``) is an error here; TensorFlow would take
  it as "every variable" and look for names with their first character cut off.

Without a map (``mapping=None``) every target variable whose path is a (renamed) checkpoint name loads
that tensor, and the others stay unset.

Example::

    loads = assign({"old_scope_1/": "new_scope_1/"}, names, TargetVars(targets), errors, notes)
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Mapping

from ..errors import MappingError, short_repr
from ..plan import StackSource
from ..targets import TargetLeaf, handle_index
from .hints import close_matches
from .names import CheckpointNames, Resolved
from .stacking import LAYER, Stacking, check_indices, layer_matches

_PART = re.compile(r"^(.*)/part_(\d{1,9})$")  # (a longer number is no part index)


@dataclasses.dataclass(frozen=True)
class Load:
    """One assignment: a checkpoint tensor into a target variable.

    ``leaves``: the leaves it loads; ``partition``: all leaves the tensor is split into, in order
    (None for a single leaf); ``var``: the variable's name (a leaf path, or the ``<var>`` of
    ``<var>/part_<n>`` leaves; None for an explicit list of unrelated leaves); ``origin``: the map
    entry, for messages.
    """

    resolved: Resolved
    leaves: tuple[str, ...]
    partition: tuple[str, ...] | None
    var: str | None
    origin: str


class TargetVars:
    """The target leaves seen as TensorFlow's variable store (``<var>/part_<n>`` = partitions)."""

    def __init__(self, targets: Mapping[str, TargetLeaf]) -> None:
        self.targets = targets
        self._handles = handle_index(targets)
        found: dict[str, list[str]] = {}
        for path in targets:
            m = _PART.match(path)
            if m:
                found.setdefault(m.group(1), []).append(path)
        # part path -> its variable, for the parts numbered from part_0 without a gap (TensorFlow's rule)
        self.bases: dict[str, str] = {p: base for base in found for p in self.partition(base)}

    def lookup(self, name: str) -> tuple[tuple[str, ...], tuple[str, ...] | None] | None:
        """``(leaves, partition)`` for a leaf path or a partitioned ``<var>``; None if neither."""
        if name in self.targets:
            return (name,), None
        parts = self.partition(name)
        return (parts, parts) if parts else None

    def partition(self, base: str) -> tuple[str, ...]:
        """``base/part_0, base/part_1, ...`` up to the first gap (TensorFlow's rule)."""
        parts: list[str] = []
        i = 0
        while f"{base}/part_{i}" in self.targets:
            parts.append(f"{base}/part_{i}")
            i += 1
        return tuple(parts)

    def path_of(self, obj: Any) -> str:
        """The leaf path ``obj`` names: a path string, or a handle (``nnx.Variable``/leaf) by identity."""
        if isinstance(obj, str):
            return obj
        paths = self._handles.get(id(obj), [])
        if len(paths) > 1:
            raise MappingError(f"the object given as a target is the leaf at several paths {paths}; "
                               "name the one you mean by its path")
        if not paths:
            raise MappingError(f"the {type(obj).__name__} given as a target is not a leaf of the target "
                               "tree (targets are leaf paths, nnx.Variable handles or lists of them)")
        return paths[0]

    def variables(self) -> list[str]:
        """Variable names as TensorFlow lists them: leaf paths, partitions as ``<var>``."""
        return sorted({self.bases.get(p, p) for p in self.targets})

    def suggest(self, name: str) -> str:
        return close_matches(name, sorted({*self.targets, *self.bases.values()}))


def normalize(mapping: Any) -> list[tuple[Any, Any]]:
    """A dict or a list of ``(checkpoint_name, target)`` pairs, as a list of pairs."""
    if isinstance(mapping, Mapping):
        return list(mapping.items())
    if isinstance(mapping, (list, tuple)):
        for i, pair in enumerate(mapping):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise MappingError(f"assignment map item #{i} must be a (checkpoint_name, target) pair, "
                                   f"got {short_repr(pair)}")
        return [tuple(p) for p in mapping]
    raise MappingError(f"the assignment map must be a dict or a list of (checkpoint_name, target) pairs, "
                       f"got {type(mapping).__name__}")


def assign(mapping: Any, names: CheckpointNames, tvars: TargetVars, errors: list[str],
           notes: list[str], stacking: Stacking | None = None) -> list[Load]:
    """The loads ``mapping`` asks for, in TensorFlow's order; problems go to ``errors``."""
    pairs = normalize(mapping)
    for key, _ in pairs:
        if not isinstance(key, str):
            raise MappingError(f"assignment map keys are checkpoint names (strings), got {key!r}")
    ctx = _Context(names, tvars, errors, notes, stacking or Stacking())
    loads: list[Load] = []
    for key, target in sorted(pairs, key=lambda p: p[0]):
        try:
            loads += _entry(key, target, ctx)
        except MappingError as e:
            errors.append(str(e))
    return loads


@dataclasses.dataclass(frozen=True)
class _Context:
    names: CheckpointNames
    tvars: TargetVars
    errors: list[str]
    notes: list[str]
    stacking: Stacking


def auto_assign(names: CheckpointNames, tvars: TargetVars, errors: list[str],
                stacking: Stacking | None = None) -> list[Load]:
    """Loads for every target variable whose name is a checkpoint name (no map given), or the name
    a stacking rule (``{i}`` in a rule's pattern) gathered layers under."""
    ctx = _Context(names, tvars, errors, [], stacking or Stacking())
    loads = []
    for var in tvars.variables():
        found = _try_resolve(var, names, errors)
        if found is not None:
            leaves, partition = tvars.lookup(var)
            loads.append(Load(found, leaves, partition, var, "matched by name"))
            continue
        if names.stacked(var):
            try:
                loads.append(_named_load(var, var, ctx, f"stacked layers for {var!r}", "matched by name"))
            except MappingError as e:
                errors.append(str(e))
            continue
        for part in tvars.partition(var):  # parts saved as tensors of their own
            found = _try_resolve(part, names, errors)
            if found is not None:
                loads.append(Load(found, (part,), None, part, "matched by name"))
    return loads


def _try_resolve(name: str, names: CheckpointNames, errors: list[str]) -> Resolved | None:
    try:
        return names.resolve(name)
    except MappingError as e:
        errors.append(str(e))
        return None


def _entry(key: str, target: Any, ctx: _Context) -> list[Load]:
    origin = f"map entry {key!r}: {_show(target)}"
    if LAYER in key:
        return _layer_entry(key, target, ctx, origin)
    if isinstance(target, (list, tuple)):
        return [_list_load(key, target, ctx.names, ctx.tvars, origin)]
    path = ctx.tvars.path_of(target)
    if ctx.tvars.lookup(path) is not None:
        return [_named_load(key, path, ctx, origin, origin)]
    loads = []
    for var, name in _scope_names(key, path, ctx, origin):
        try:
            loads.append(_named_load(name, var, ctx, f"{origin} (for {var!r})", origin))
        except MappingError as e:
            ctx.errors.append(str(e))
    return loads


def _named_load(name: str, var: str, ctx: _Context, where: str, origin: str) -> Load:
    """The load of checkpoint name ``name`` into ``var``: one tensor, or the layers a stacking rule
    gathered under ``name``."""
    if ctx.names.resolve(name) is None:
        layers = ctx.names.stacked(name)
        if layers:
            return _stacked_load(layers, name, var, ctx, where, origin)
    leaves, partition = ctx.tvars.lookup(var)
    return Load(_resolve(name, ctx.names, where), leaves, partition, var, origin)


def _layer_entry(key: str, target: Any, ctx: _Context, origin: str) -> list[Load]:
    """A key with ``{i}``: a per-layer rename when the target has ``{i}`` too, else a stack."""
    if isinstance(target, str) and LAYER in target:
        found = layer_matches(key, ctx.names.names(), origin, scope=key.endswith("/"))
        if not found:
            raise MappingError(f"{origin}: no checkpoint name matches {key!r}.{ctx.names.suggest(key)}")
        loads = []
        for i, text in sorted(found.items()):
            loads += _entry(key.replace(LAYER, text), target.replace(LAYER, str(i)), ctx)
        return loads
    if isinstance(target, (list, tuple)):
        raise MappingError(f"{origin}: a stacked ('{LAYER}') entry needs one target leaf or scope, not a list")
    path = ctx.tvars.path_of(target)
    if ctx.tvars.lookup(path) is not None:
        return [_stack_load(key, path, ctx, origin)]
    loads = []
    for var, name in _scope_names(key, path, ctx, origin):
        try:
            loads.append(_stack_load(name, var, ctx, origin))
        except MappingError as e:
            ctx.errors.append(str(e))
    return loads


def _stack_load(pattern: str, var: str, ctx: _Context, origin: str) -> Load:
    """Layers ``pattern`` (one ``{i}``) matches, stacked into target ``var``."""
    where = f"{origin} (for {var!r})"
    found = layer_matches(pattern, ctx.names.names(), where)
    if not found:
        raise MappingError(f"{where}: no checkpoint name matches {pattern!r}."
                           f"{ctx.names.suggest(pattern.replace(LAYER, '0'))}")
    layers = {i: functools.partial(_resolve, pattern.replace(LAYER, text), ctx.names, where)
              for i, text in found.items()}
    return _stacked_load(layers, pattern, var, ctx, where, origin)


def _stacked_load(layers: Mapping[int, Callable[[], Resolved]], label: str, var: str, ctx: _Context, where: str,
                  origin: str) -> Load:
    """``layers`` (index -> its tensor) stacked into target ``var`` (one leaf) along its stack axis."""
    if var not in ctx.tvars.targets:
        raise MappingError(f"{where}: stacked layers go into one leaf; {var!r} is a partitioned variable "
                           f"({', '.join(ctx.tvars.partition(var))})")
    shape = tuple(ctx.tvars.targets[var].shape)
    axis = ctx.stacking.axis_for(var, len(shape))
    check_indices(layers, shape[axis], label, var, axis, shape, where)
    layer_shape = shape[:axis] + shape[axis + 1:]
    sources, keys = [], []
    for i in range(shape[axis]):
        resolved = layers[i]()
        source = resolved.source
        if ctx.stacking.fit is not None:
            source = ctx.stacking.fit(source, layer_shape, resolved.name)
        sources.append(source)
        keys += resolved.keys
    return Load(Resolved(label, StackSource(tuple(sources), axis), tuple(keys)), (var,), None, var, origin)


def _list_load(key: str, target: list | tuple, names: CheckpointNames, tvars: TargetVars, origin: str) -> Load:
    if not target:
        raise MappingError(f"{origin}: an empty list of targets")
    paths = [tvars.path_of(t) for t in target]
    for p in paths:
        if p not in tvars.targets:
            raise MappingError(f"{origin}: {p!r} is not a leaf of the target tree.{tvars.suggest(p)}")
    bases = {tvars.bases.get(p) for p in paths}
    if len(bases) > 1:
        raise MappingError(f"{origin}: slices must all be from the same variable: a list target holds "
                           f"the parts of one partitioned variable (all '<var>/part_<n>' of one <var>) "
                           f"or plain leaves, got {paths}")
    base = bases.pop()
    if base is not None:
        return Load(_resolve(key, names, origin), tuple(paths), tvars.partition(base), base, origin)
    if len(set(paths)) != len(paths):
        raise MappingError(f"{origin}: a leaf appears twice in the list")
    return Load(_resolve(key, names, origin), tuple(paths), tuple(paths), None, origin)


def _scope_names(key: str, target: str, ctx: _Context, origin: str) -> list[tuple[str, str]]:
    """``(variable, checkpoint name)`` for every target variable in scope ``target``, TensorFlow's way."""
    tvars = ctx.tvars
    if not key.endswith("/"):
        raise MappingError(
            f"{origin}: {target!r} is not a leaf of the target tree (nor a partitioned variable with "
            f"'{target}/part_<n>' leaves).{tvars.suggest(target)} To map a whole scope, end both sides "
            f"with '/', e.g. {{'{key.rsplit('/', 1)[0]}/': '{target.rsplit('/', 1)[0]}/'}}.")
    if "/" not in target:
        raise MappingError(f"{origin}: {target!r} is neither a leaf of the target tree nor a scope "
                           f"(scopes end with '/', e.g. '{target}/').{tvars.suggest(target)}")
    scope = target[: target.rindex("/")]
    if not target.endswith("/"):
        ctx.notes.append(f"{origin}: {target!r} is not a leaf, so it is read as the scope '{scope}/' "
                         "(as TensorFlow does)")
    in_scope = sorted({tvars.bases.get(v, v) for v in tvars.targets if not scope or v.startswith(scope + "/")})
    if not in_scope:
        ctx.notes.append(f"{origin}: no target leaf is in scope '{scope}/'; the entry loads nothing.")
    out = []
    for var in in_scope:
        name = var[len(scope):]
        if target != "/":
            name = name[1:]
        if key != "/":
            name = key + name
        if name.endswith("/"):
            name = name[:-1]
        out.append((var, name))
    return out


def _resolve(name: str, names: CheckpointNames, origin: str) -> Resolved:
    r = names.resolve(name)
    if r is None:
        hint = names.suggest(name)
        if name.endswith("/"):
            hint += " A key ending with '/' names a scope: its target must be a scope too (ending with '/')."
        raise MappingError(f"{origin}: checkpoint {names.ckpt_path} has no tensor {name!r}.{hint}")
    return r


def _show(target: Any) -> str:
    if isinstance(target, str):
        return repr(target)
    if isinstance(target, (list, tuple)):
        return "[" + ", ".join(_show(t) for t in target) + "]"
    return f"<{type(target).__name__}>"

