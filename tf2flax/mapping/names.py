"""The checkpoint side: every name a checkpoint tensor answers to, after renames.

- A TF1 tensor answers to its name. A TF2 variable answers to its checkpoint key, its object path
  (the key without ``/.ATTRIBUTES/VARIABLE_VALUE``), its model path (its path through the model, for
  Keras models saved with their optimizer) and its ``full_name`` (e.g. ``sequential/dense/kernel``).
- Each of those names goes through the preset's rules, then the user's rules (see ``rules.py``), then
  gets the preset's linen collection alias (see ``presets.py``) when the targets use collections.
- A name shared by several tensors is ambiguous: using it is an error that lists the candidates.
- ``<var>/part_<n>`` names (``n`` = 0, 1, ... with no gap) also form a name ``<var>``: the parts
  concatenated along the one axis where their shapes differ (axis 0 when they all agree, or
  ``part_axis``), unless a tensor is already called ``<var>``.
- Optimizer state (TF2 optimizer variables; TF1 slots such as ``<var>/Adam``, ``<var>/adam_m``),
  ``global_step``, ``save_counter`` and the object graph are *skipped* (see ``tf2flax.naming``):
  addressable, but not reported as unused; so is any tensor a ``None`` rule dropped a name of.

Example::

    names = CheckpointNames(ckpt, rule_stages=[KERAS.rules])
    names.resolve("sequential/batch_normalization/scale").source.shape
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..formats.object_graph import VALUE_SUFFIX as _VALUE_SUFFIX
from ..errors import MappingError, short_repr
from ..naming import left_out_reason
from ..plan import ConcatSource, Source, TensorSource
from .hints import close_matches
from .rules import Rule, rename_layer

_PART = re.compile(r"^(.*)/part_(\d{1,9})$")  # (a longer number is no part index)

PartAxis = int | Mapping[str, int] | None


@dataclasses.dataclass(frozen=True)
class NamedTensorSource(TensorSource):
    """A :class:`TensorSource` that describes itself by a readable name (e.g. a TF2 ``full_name``)."""

    label: str = ""

    def describe(self) -> str:
        return self.label or self.name


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One real checkpoint tensor."""

    key: str
    label: str
    skipped: bool


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What a checkpoint name stands for: a lazy source and the checkpoint keys it reads."""

    name: str
    source: Source
    keys: tuple[str, ...]


def check_part_axis(part_axis: Any, where: str = "part_axis") -> None:
    """Refuse a ``part_axis`` that is not None, an int or a ``{variable name: int}`` mapping, whether or
    not anything is concatenated or split.

    Example::

        check_part_axis({"dense/kernel": 1})      # fine; check_part_axis("x") raises MappingError
    """
    def is_axis(a: Any) -> bool:
        return isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))

    axes = part_axis.values() if isinstance(part_axis, Mapping) else [part_axis] if part_axis is not None else []
    keys = part_axis.keys() if isinstance(part_axis, Mapping) else []
    if not all(is_axis(a) for a in axes) or not all(isinstance(k, str) for k in keys):
        raise MappingError(f"{where}: part_axis must be an axis (an int) or a mapping of variable name to axis, "
                           f"got {short_repr(part_axis)}")


def axis_for(part_axis: PartAxis, name: str) -> int | None:
    """The axis ``part_axis`` gives for variable ``name`` (an int for all, or a per-name dict)."""
    if isinstance(part_axis, Mapping):
        return part_axis.get(name)
    return part_axis


def concat_axis(shapes: Sequence[Sequence[int]], axis: int | None, what: str) -> int:
    """The axis along which parts of ``shapes`` join: the one where they differ, 0 if they all agree."""
    rank = len(shapes[0])
    if any(len(s) != rank for s in shapes):
        raise MappingError(f"{what}: parts have different ranks {[list(s) for s in shapes]}")
    if rank == 0:
        raise MappingError(f"{what}: scalar parts cannot be concatenated")
    differ = [a for a in range(rank) if len({s[a] for s in shapes}) > 1]
    if axis is not None:
        if not -rank <= axis < rank or any(a != axis % rank for a in differ):
            raise MappingError(f"{what}: parts {[list(s) for s in shapes]} cannot be joined along axis {axis}")
        return axis % rank
    if len(differ) > 1:
        raise MappingError(f"{what}: parts {[list(s) for s in shapes]} differ in more than one axis")
    return differ[0] if differ else 0


class CheckpointNames:
    """Name -> tensor resolution for one checkpoint under a set of renames.

    ``rule_stages``: rule lists applied in turn (first match wins within a stage); a stacking rule
    (``{i}``) files the tensor under its renamed name as one layer of a stack.
    ``collection``: original name -> linen collection, to add ``<collection>/<name>`` aliases.
    ``scan``: stacking rules whose renames are extra names (a preset's scanned layout beside its
    per-layer one). ``skip``: original names that are optimizer state (not reported as unused).
    """

    def __init__(self, ckpt: Any, rule_stages: Sequence[Sequence[Rule]] = (),
                 collection: Callable[[str], str] | None = None, part_axis: PartAxis = None,
                 scan: Sequence[Rule] = (), skip: Callable[[str], bool] | None = None) -> None:
        self.ckpt = ckpt
        self.ckpt_path = getattr(ckpt, "path", "<checkpoint>")
        self.part_axis = part_axis
        self.tensors: list[Tensor] = []
        self._index: dict[str, list[int]] = {}
        self._stacks: dict[str, dict[int, list[int]]] = {}
        for key, originals, label, skipped in tensor_names(ckpt):
            tid = len(self.tensors)
            dropped = False
            for original in originals:
                skipped = skipped or bool(skip and skip(original))
                name, layer = original, None
                for stage in rule_stages:
                    name, found = rename_layer(name, stage)
                    if name is None:
                        break
                    layer = found if found is not None else layer
                if name is None:
                    dropped = True
                    continue
                aliases = [name]
                if collection is not None:
                    coll = collection(original)
                    if not name.startswith(coll + "/"):
                        aliases.append(f"{coll}/{name}")
                if layer is not None:
                    for alias in aliases:
                        self._add_layer(alias, layer, tid)
                    continue
                for alias in aliases:
                    ids = self._index.setdefault(alias, [])
                    if tid not in ids:
                        ids.append(tid)
                    scanned, index = rename_layer(alias, scan)
                    if scanned is not None and index is not None:
                        self._add_layer(scanned, index, tid)
            self.tensors.append(Tensor(key, label, skipped or dropped))
        self._parts = self._part_groups()
        self._sorted: list[str] | None = None

    def _add_layer(self, name: str, layer: int, tid: int) -> None:
        ids = self._stacks.setdefault(name, {}).setdefault(layer, [])
        if tid not in ids:
            ids.append(tid)

    def stacked(self, name: str) -> dict[int, Callable[[], Resolved]] | None:
        """``{layer index: its tensor}`` a stacking rule gathered under ``name``; None if none did."""
        layers = self._stacks.get(name)
        if not layers:
            return None
        return {i: functools.partial(self._layer, name, i, ids) for i, ids in layers.items()}

    def _layer(self, name: str, layer: int, ids: list[int]) -> Resolved:
        if len(ids) > 1:
            keys = ", ".join(repr(self.tensors[i].key) for i in ids)
            raise MappingError(f"layer {layer} of stacked name {name!r} is ambiguous: {len(ids)} tensors "
                               f"({keys}) were renamed to it")
        t = self.tensors[ids[0]]
        return Resolved(t.label, NamedTensorSource(self.ckpt, t.key, label=t.label), (t.key,))

    def _part_groups(self) -> dict[str, list[str]]:
        found: dict[str, dict[int, str]] = {}
        for name, ids in self._index.items():
            m = _PART.match(name)
            if m and len(ids) == 1:
                found.setdefault(m.group(1), {})[int(m.group(2))] = name
        groups = {}
        for base, parts in found.items():
            if base not in self._index and sorted(parts) == list(range(len(parts))):
                groups[base] = [parts[i] for i in range(len(parts))]
        return groups

    def partitions(self) -> dict[str, list[str]]:
        """``{<var>: [<var>/part_0, <var>/part_1, ...]}`` for the partitioned names this checkpoint has."""
        return {base: list(parts) for base, parts in self._parts.items()}

    def names(self) -> list[str]:
        """Every addressable name, sorted (for suggestions and ``{i}`` matching)."""
        if self._sorted is None:
            self._sorted = sorted({*self._index, *self._parts, *self._stacks})
        return self._sorted

    def resolve(self, name: str) -> Resolved | None:
        """The tensor ``name`` stands for, None if no tensor has that name; ambiguity is an error."""
        ids = self._index.get(name)
        if ids:
            if len(ids) > 1:
                keys = ", ".join(repr(self.tensors[i].key) for i in ids)
                raise MappingError(f"checkpoint name {name!r} is ambiguous: it names {len(ids)} tensors "
                                   f"({keys}); use one of their checkpoint keys")
            t = self.tensors[ids[0]]
            return Resolved(name, NamedTensorSource(self.ckpt, t.key, label=t.label), (t.key,))
        if name in self._parts:
            parts = [self.resolve(p) for p in self._parts[name]]
            axis = concat_axis([p.source.shape for p in parts], axis_for(self.part_axis, name),
                               f"checkpoint tensors {name}/part_*")
            keys = tuple(k for p in parts for k in p.keys)
            return Resolved(name, ConcatSource(tuple(p.source for p in parts), axis), keys)
        return None

    def suggest(self, name: str) -> str:
        """A "close names: ..." phrase for a name that is not in the checkpoint."""
        return close_matches(name, self.names())

    def unused(self, used_keys: Iterable[str]) -> tuple[list[str], list[str]]:
        """(unused, skipped) tensor labels, given the keys a plan reads."""
        used = set(used_keys)
        rest = [t for t in self.tensors if t.key not in used]
        return sorted(t.label for t in rest if not t.skipped), sorted(t.label for t in rest if t.skipped)


def tensor_names(ckpt: Any) -> list[tuple[str, list[str], str, bool]]:
    """(key, names before renames, label, skipped) for every tensor of ``ckpt``: the names are the
    checkpoint key, then (TF2) the object path, model path and ``full_name``.

    Example::

        [(key, names) for key, names, _, skipped in tensor_names(ckpt) if not skipped]
    """
    graph = getattr(ckpt, "object_graph", None)
    by_key = {v.key: v for v in graph.variables} if graph is not None else {}
    full_names = collections.Counter(v.full_name for v in by_key.values() if v.full_name)
    out = []
    for key in ckpt.names:
        v = by_key.get(key)
        if v is None:
            label = key[: -len(_VALUE_SUFFIX)] if key.endswith(_VALUE_SUFFIX) else key
            out.append((key, _unique([key, label]), label, left_out_reason(key, label) is not None))
            continue
        unique_full = bool(v.full_name) and full_names[v.full_name] == 1
        label = v.full_name if unique_full else (v.model_path or v.object_path)
        names = _unique([key, v.object_path, v.model_path, v.full_name])
        skipped = left_out_reason(key, v.model_path or v.object_path, bool(v.is_optimizer)) is not None
        out.append((key, names, label, skipped))
    return out


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(n for n in names if n))

