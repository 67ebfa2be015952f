"""Layers on both sides of an automatic mapping, and the evidence that pairs them.

A *layer* is the set of leaves under one parent path: a kernel with its bias, a norm's scale, bias
and statistics. Layers, not leaves, are matched, so the leaves of one layer always move together.

- Checkpoint layers come from each tensor's structural path (TF2: its path through the model,
  ``model/_operations/3/_kernel``; TF1: its name), after the preset's and the user's rules; a leaf
  named ``word_embeddings`` is the ``embedding`` of a layer ``.../word``. Optimizer state and
  bookkeeping are not layers. Its name tokens also take the TF2 ``full_name`` (``conv2d_3/kernel``).
- Target layers come from the leaf paths (a linen collection, ``params``/``batch_stats``, is not part
  of the layer: a BatchNorm's ``scale`` and ``mean`` are one layer).
- :func:`fit_layer`: can a checkpoint layer load a target layer? The same leaf kinds, and each
  shape equal, or equal after a reshape that only splits or merges adjacent axes (``[H, H]`` ->
  ``[H, heads, head_dim]``; a depthwise kernel ``[3, 3, C, 1]`` -> ``[3, 3, 1, C]`` only with
  evidence that it is depthwise), or after the user's transform for that leaf. Never a transpose.
- :class:`NameScores`: weighted overlap (Dice, words weighted by rarity) of the layers' name tokens.
- :func:`order_pairs`: siblings (layers whose paths differ only by indices: ``layers/0``,
  ``layers/1``; ``layer_with_weights-4``) are ordered on both sides; an order-preserving alignment of
  two sibling lists that pairs a target with one checkpoint layer in every best alignment is order
  evidence.

Example::

    layers = checkpoint_layers(ckpt, names, stages)
    fit_layer(layers[0], target_layers(targets)[0], specs)   # {kind: Fit} or a reason string
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ...errors import MappingError, Tf2FlaxError
from ...plan import axis_groups, can_cast
from ...targets import TargetLeaf
from ..names import CheckpointNames, tensor_names
from ..rules import Rule, rename_layer
from ..transforms import TransformSpecs, parse_spec
from .tokens import DEPTHWISE_LEAVES, LEAF_KINDS, index_spans, leaf_kind, name_tokens, split_leaf, template

_PART = re.compile(r"^(.*)/part_(\d+)$")
_FLAT = re.compile(r"(^|/)_?(all_)?(trainable_|non_trainable_)?variables/\d+$")
LINEN_COLLECTIONS = ("params", "batch_stats", "cache", "intermediates")
ATTRIBUTE_ORDER = "<the model's attribute order>"
CANONICAL_KINDS = frozenset(LEAF_KINDS.values())
TRANSPOSED_CONV = frozenset({"transpose", "transposed", "deconv", "deconvolution"})


@dataclasses.dataclass
class Leaf:
    """One leaf: the name a map uses for it (checkpoint name or target path), its kind and shape."""

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: Any
    depthwise: bool = False


@dataclasses.dataclass
class Layer:
    """The leaves under one parent path, with what its names and position say."""

    side: str
    path: str
    leaves: dict[str, Leaf] = dataclasses.field(default_factory=dict)
    tokens: frozenset[str] = frozenset()
    local: frozenset[str] = frozenset()
    orders: list[tuple[str, tuple[int, ...]]] = dataclasses.field(default_factory=list)
    # (real parent path, {kind: leaf name}) per naming scheme, for ``{i}`` stacks
    schemes: list[tuple[str, dict[str, str]]] = dataclasses.field(default_factory=list)
    refused: str = ""

    def signature(self) -> str:
        """``kernel[64, 64] bias[64]``: the kinds and shapes, for messages."""
        return " ".join(f"{k}{list(leaf.shape)}" for k, leaf in sorted(self.leaves.items()))


@dataclasses.dataclass(frozen=True)
class Fit:
    """How one checkpoint leaf becomes one target leaf: ``spec`` is None, the user's, or a reshape."""

    source: str
    target: str
    spec: Any
    how: str


def checkpoint_layers(ckpt: Any, names: CheckpointNames, stages: Sequence[Sequence[Rule]],
                      exclude: set[str] = frozenset()) -> list[Layer]:
    """The checkpoint's layers (optimizer state, bookkeeping, dropped names and ``exclude`` keys left out)."""
    graph = getattr(ckpt, "object_graph", None)
    by_key = {v.key: v for v in graph.variables} if graph is not None else {}
    parts = names.partitions()
    part_of = {p: base for base, ps in parts.items() for p in ps}
    layers: dict[str, Layer] = {}
    seen_bases: set[str] = set()
    copies: set[tuple] = set()
    for (key, originals, label, _), tensor in zip(tensor_names(ckpt), names.tensors):
        if tensor.skipped or key in exclude:
            continue
        v = by_key.get(key)
        struct_name = (v.model_path or v.object_path) if v is not None else label
        full = _rename(v.full_name, stages) if v is not None and v.full_name else None
        if full and _FLAT.search(struct_name):
            # a variable in a flat list (Keras's model.export(): variables/3, _all_variables/5): its
            # layer is in its full name; a second list holding the same bytes under that name is a copy
            struct_name = v.full_name
            copy = (full, _checksum(ckpt, key))
            if copy[1] is not None and copy in copies:
                continue
            copies.add(copy)
        struct = _rename(struct_name, stages)
        if struct is None:
            continue
        candidates = [_rename(label, stages), struct, *(_rename(o, stages) for o in originals)]
        base = part_of.get(struct)
        if base is not None:
            if base in seen_bases:
                continue
            seen_bases.add(base)
            resolved = names.resolve(base)
            struct, map_name, full = base, base, None
            shape, dtype = tuple(resolved.source.shape), resolved.source.dtype
        else:
            map_name = next((n for n in candidates if n and _resolves_to(names, n, key)), None)
            if map_name is None:
                continue
            try:
                shape, dtype = tuple(ckpt.shape(key)), ckpt.dtype(key)
            except Tf2FlaxError:  # a tensor of a kind no Flax leaf holds (DT_VARIANT): not a layer
                continue
        schemes = [struct] + ([full] if full and _resolves_to(names, full, key) else [])
        _add_leaf(layers, "checkpoint", schemes, map_name, shape, dtype)
    return list(layers.values())


def _variables(targets: Mapping[str, TargetLeaf], exclude: set[str]) -> list[tuple[str, tuple[int, ...], Any]]:
    """``(path, shape, dtype)`` per target variable: a leaf, or ``<var>`` for ``<var>/part_0 ..`` leaves
    (TensorFlow's partitioned variable: the parts joined along the one axis where they differ, else 0)."""
    out, seen = [], set()
    for path, leaf in targets.items():
        if path in exclude or path in seen:
            continue
        m = _PART.match(path)
        parts = []
        if m and path.endswith("/part_0"):
            i = 0
            while f"{m.group(1)}/part_{i}" in targets:
                parts.append(targets[f"{m.group(1)}/part_{i}"])
                i += 1
        shapes = [tuple(p.shape) for p in parts]
        if len(parts) > 1 and all(len(sh) == len(shapes[0]) and sh for sh in shapes) and \
                not any(p.path in exclude for p in parts):
            differ = [a for a in range(len(shapes[0])) if len({sh[a] for sh in shapes}) > 1]
            if len(differ) <= 1:
                axis = differ[0] if differ else 0
                shape = tuple(sum(sh[a] for sh in shapes) if a == axis else d for a, d in enumerate(shapes[0]))
                seen |= {p.path for p in parts}
                out.append((m.group(1), shape, leaf.dtype))
                continue
        out.append((path, tuple(leaf.shape), leaf.dtype))
    return out


def _checksum(ckpt: Any, key: str) -> tuple | None:
    """(shape, dtype, size, crc32c) of a dense stored tensor, from the index alone; None if unknown."""
    try:
        info = ckpt.info(key)
    except Tf2FlaxError:
        return None
    stored = getattr(info, "stored", None)
    if stored is None:
        return None
    return tuple(info.shape), str(info.dtype), stored.size, stored.crc32c


def target_layers(targets: Mapping[str, TargetLeaf], exclude: set[str] = frozenset(),
                  order: Mapping[str, int] | None = None) -> list[Layer]:
    """The target's layers; a linen collection prefix (``params/``, ``batch_stats/``) is not part of them.
    ``order``: leaf path -> rank (an ``nnx.Module``'s attribute order) orders all layers as siblings."""
    linen = any(p.split("/", 1)[0] == "params" for p in targets)
    layers: dict[str, Layer] = {}
    for path, shape, dtype in _variables(targets, exclude):
        struct = path.split("/", 1)[1] if linen and "/" in path and path.split("/", 1)[0] in LINEN_COLLECTIONS \
            else path
        _add_leaf(layers, "target", [struct], path, shape, dtype)
    out = list(layers.values())
    if order:
        for layer in out:
            ranks = [order[leaf.name] for leaf in layer.leaves.values() if leaf.name in order]
            if len(ranks) == len(layer.leaves):
                layer.orders.append((ATTRIBUTE_ORDER, (min(ranks),)))
    return out


def local_tokens(path: str) -> frozenset[str]:
    """A block's own names: the words after the last layer index (``attention/output/LayerNorm`` in
    ``bert/encoder/layer_3/attention/output/LayerNorm``), else those of the last part that has words
    (``batch_normalization_1``: {norm}, as for ``batch_normalization``); a path without an index: all
    its words."""
    spans = index_spans(path)
    if not spans:
        return name_tokens(path)
    after = name_tokens(path[spans[-1][1]:])
    if after:
        return after
    for part in reversed(path.split("/")):
        words = name_tokens(part)
        if words:
            return words
    return frozenset()


def attribute_order(params: Any) -> dict[str, int]:
    """``{leaf path: rank}`` in an ``nnx.Module``'s attribute definition order (its ``__init__``), which
    ``nnx.state`` (sorted by name) loses; empty for other trees."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is None or not isinstance(params, nnx.Module):
        return {}
    order: dict[str, int] = {}
    seen: set[int] = set()

    def walk(obj: Any, prefix: tuple[str, ...]) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, nnx.Variable):
            order.setdefault("/".join(prefix), len(order))
            return
        if isinstance(obj, (list, tuple)):
            items: Iterable = enumerate(obj)
        elif isinstance(obj, dict):
            items = obj.items()
        elif isinstance(obj, nnx.Module):
            items = ((k, v) for k, v in vars(obj).items() if not str(k).startswith("_"))
        else:
            return
        for k, v in items:
            walk(v, (*prefix, str(k)))

    walk(params, ())
    return order


def _rename(name: str, stages: Sequence[Sequence[Rule]]) -> str | None:
    for stage in stages:
        name, layer = rename_layer(name, stage)
        if name is None or layer is not None:
            return None
    return name


def _resolves_to(names: CheckpointNames, name: str, key: str) -> bool:
    try:
        resolved = names.resolve(name)
    except MappingError:
        return False
    return resolved is not None and resolved.keys == (key,)


def _add_leaf(layers: dict[str, Layer], side: str, schemes: list[str], name: str, shape: tuple[int, ...],
              dtype: Any) -> None:
    """File leaf ``name`` under its layer, named by the first of ``schemes`` (structural path first)."""
    parent, _, leaf_name = schemes[0].rpartition("/")
    split = split_leaf(leaf_name)
    kind = split[1] if split else leaf_kind(leaf_name)
    path = f"{parent}/{split[0]}" if split and parent else split[0] if split else parent
    if kind not in CANONICAL_KINDS:   # a parameter of its own (pos_emb, cls_token): a one-leaf layer
        path, kind = schemes[0], "param"
    layer = layers.get(path)
    if layer is None:
        layer = layers[path] = Layer(side, path or "<root>")
        tokens: set[str] = set()
        local: set[str] = set()
        for scheme in schemes:
            p, _, ln = scheme.rpartition("/")
            s = split_leaf(ln)
            named = scheme if kind == "param" else f"{p}/{s[0]}" if s else p
            tokens |= name_tokens(named)
            local |= local_tokens(named)
            layer.orders.append(template(p))
            layer.schemes.append((p, {}))
        layer.tokens, layer.local = frozenset(tokens), frozenset(local)
    if kind in layer.leaves:
        layer.refused = (f"two leaves of kind {kind!r} ({layer.leaves[kind].name!r}, {name!r}): auto cannot "
                         "tell which is which")
        return
    layer.leaves[kind] = Leaf(name, kind, shape, dtype, leaf_name.lstrip("_").lower() in DEPTHWISE_LEAVES)
    if kind == "recurrent_kernel":
        layer.refused = ("a recurrent cell (kernel + recurrent_kernel): its gates are fused in TensorFlow's "
                         "i, f, c, o order, a layout auto does not convert")
    for (_, leaf_names), scheme in zip(layer.schemes, schemes):
        leaf_names[kind] = scheme


def reshape_ok(src: tuple[int, ...], dst: tuple[int, ...]) -> bool:
    """Whether ``src`` becomes ``dst`` by splitting or merging adjacent axes (and size-1 axes)."""
    if math.prod(src) != math.prod(dst) or 0 in src:
        return False
    src, dst = [d for d in src if d != 1], [d for d in dst if d != 1]
    if src == dst:
        return True
    groups = axis_groups(src, dst)
    if groups is None:
        return False
    return all(len(ins) <= 1 or len(outs) <= 1 for ins, outs in groups)


def fit_layer(src: Layer, dst: Layer, specs: TransformSpecs) -> dict[str, Fit] | str:
    """How checkpoint layer ``src`` loads target layer ``dst``, per kind; a reason string if it cannot."""
    if set(src.leaves) != set(dst.leaves):
        if not _single_params(src, dst):
            return f"its leaves are {sorted(src.leaves)}, the target's {sorted(dst.leaves)}"
        s, t = next(iter(src.leaves.values())), next(iter(dst.leaves.values()))
        if s.shape != t.shape or not _castable(s.dtype, t.dtype):
            return f"{t.kind}: shape {list(s.shape)} does not fit {list(t.shape)}"
        return {t.kind: Fit(s.name, t.name, None, "same shape (one parameter each)")}
    kernel = dst.leaves.get("kernel")
    if kernel is not None and len(kernel.shape) >= 3 and (src.tokens | dst.tokens) & TRANSPOSED_CONV:
        return ("a transposed convolution: TensorFlow stores its kernel (..., out, in), Flax (..., in, out); "
                "auto does not convert it")
    out: dict[str, Fit] = {}
    for kind, t in dst.leaves.items():
        s = src.leaves[kind]
        if not _castable(s.dtype, t.dtype):
            return f"{kind}: a {s.dtype} tensor cannot become {t.dtype}"
        spec = specs.find(t.name)
        if spec is not None:
            try:
                steps = parse_spec(spec, s.shape, s.dtype, repr(t.name))
                shape = s.shape
                for step in steps:
                    shape = step.out_shape(shape)
            except MappingError as e:
                return f"{kind}: the given transform does not fit: {e}"
            if tuple(shape) != t.shape:
                return f"{kind}: {list(s.shape)} becomes {list(shape)} with the given transform, not {list(t.shape)}"
            out[kind] = Fit(s.name, t.name, None, "given transform")
        elif s.shape == t.shape:
            out[kind] = Fit(s.name, t.name, None, "same shape")
        elif reshape_ok(s.shape, t.shape) and _channel_move_ok(s, t, src, dst):
            out[kind] = Fit(s.name, t.name, ("reshape", list(t.shape)), f"reshape {list(s.shape)} -> {list(t.shape)}")
        else:
            return f"{kind}: shape {list(s.shape)} does not fit {list(t.shape)}"
    return out


def _castable(src: Any, dst: Any) -> bool:
    try:
        return can_cast(np.dtype(src), np.dtype(dst))
    except TypeError:  # a PRNG key or another dtype no checkpoint holds
        return False


def _single_params(src: Layer, dst: Layer) -> bool:
    """Two one-leaf layers whose leaf names are not the usual kinds (``pos_emb``, ``cls_token``): their
    names are compared as layer names, and only equal shapes fit."""
    if len(src.leaves) != 1 or len(dst.leaves) != 1:
        return False
    kinds = {next(iter(src.leaves)), next(iter(dst.leaves))}
    return not kinds <= CANONICAL_KINDS


def _channel_move_ok(s: Leaf, t: Leaf, src: Layer, dst: Layer) -> bool:
    """A conv kernel whose input-channel axis changes (``[3, 3, C, M]`` -> ``[3, 3, 1, C*M]``) is a
    depthwise kernel only with evidence: a depthwise name, or a bias as wide as the target's output."""
    if len(s.shape) != 4 or len(t.shape) != 4 or s.shape[2] == t.shape[2]:
        return True
    if s.depthwise or "depthwise" in src.tokens or "depthwise" in dst.tokens:
        return True
    bias = src.leaves.get("bias")
    return t.shape[2] == 1 and bias is not None and math.prod(bias.shape) == t.shape[3]


class NameScores:
    """Name similarity of two layers: the weighted Dice overlap of their tokens, rarer words weighing more."""

    def __init__(self, layers: Iterable[Layer]) -> None:
        # Rarity is counted over distinct layer templates: 24 repeated blocks do not make their words
        # common (or the similarity would depend on the depth of the model).
        kinds: dict[tuple[str, str], frozenset[str]] = {}
        for layer in layers:
            kinds[(layer.side, layer.orders[0][0] if layer.orders else layer.path)] = layer.tokens
        df: dict[str, int] = {}
        for tokens in kinds.values():
            for tok in tokens:
                df[tok] = df.get(tok, 0) + 1
        n = max(len(kinds), 1)
        self.weight = {tok: math.log((n + 1) / (c + 0.5)) + 0.1 for tok, c in df.items()}

    def __call__(self, a: Layer, b: Layer) -> float:
        """The mean of two overlaps: of the whole paths (rare words weigh more), and of their parts after
        the last layer index (``attention/output/LayerNorm`` within ``layer_3``), where a block's own
        names are (every word weighs the same)."""
        return (self.dice(a.tokens, b.tokens, self.weight) + self.dice(a.local, b.local, {})) / 2

    @staticmethod
    def dice(a: frozenset[str], b: frozenset[str], weight: Mapping[str, float]) -> float:
        wa = sum(weight.get(t, 1.0) for t in a)
        wb = sum(weight.get(t, 1.0) for t in b)
        if wa + wb == 0:
            return 0.0
        return 2 * sum(weight.get(t, 1.0) for t in a & b) / (wa + wb)


def sibling_lists(layers: Sequence[Layer]) -> list[tuple[str, list[int]]]:
    """``(template, layer positions sorted by index)`` for every template two or more layers share.

    Keras's first layer of a kind has no suffix (``dense``, ``dense_1``): it joins ``dense_#`` first.
    """
    found: dict[str, dict[tuple[int, ...], list[int]]] = {}
    plain: dict[str, list[int]] = {}
    for pos, layer in enumerate(layers):
        for tmpl, idx in layer.orders:
            if idx:
                found.setdefault(tmpl, {}).setdefault(idx, []).append(pos)
            else:
                plain.setdefault(tmpl, []).append(pos)
    for tmpl, positions in plain.items():
        joined = found.get(tmpl + "_#")
        if joined is not None and len(positions) == 1 and all(len(i) == 1 for i in joined):
            joined.setdefault((-1,), []).extend(positions)
    out = []
    for tmpl, by_index in found.items():
        if len(by_index) < 2 or any(len(p) > 1 for p in by_index.values()):
            continue
        out.append((tmpl, [by_index[i][0] for i in sorted(by_index)]))
    return out


def order_pairs(targets: Sequence[Layer], sources: Sequence[Layer],
                compatible: Mapping[tuple[int, int], Any]) -> dict[tuple[int, int], str]:
    """``{(target pos, source pos): why}`` for pairs every best order-preserving alignment of two
    sibling lists makes (see the module docstring)."""
    out: dict[tuple[int, int], str] = {}
    for ttmpl, tl in sibling_lists(targets):
        for stmpl, sl in sibling_lists(sources):
            ok = [[(t, s) in compatible for s in sl] for t in tl]
            if not any(any(row) for row in ok):
                continue
            for i, j in forced_alignment(ok):
                why = (f"order: #{i + 1} of {len(tl)} in target {ttmpl!r}, #{j + 1} of {len(sl)} in "
                       f"checkpoint {stmpl!r}")
                out.setdefault((tl[i], sl[j]), why)
    return out


def forced_alignment(ok: list[list[bool]]) -> list[tuple[int, int]]:
    """The pairs ``(i, j)`` that every maximum order-preserving matching of rows to columns makes
    (``ok[i][j]``: row i may take column j).

    Example::

        forced_alignment([[True, False, False], [False, True, True]])   # [(0, 0)]
    """
    n, m = len(ok), len(ok[0]) if ok else 0
    f = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n):
        for j in range(m):
            f[i + 1][j + 1] = max(f[i][j + 1], f[i + 1][j], f[i][j] + 1 if ok[i][j] else 0)
    g = [[0] * (m + 2) for _ in range(n + 2)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            g[i][j] = max(g[i + 1][j], g[i][j + 1], g[i + 1][j + 1] + 1 if ok[i][j] else 0)
    best = f[n][m]
    out = []
    for i in range(n):
        partners = [j for j in range(m) if ok[i][j] and f[i][j] + 1 + g[i + 1][j + 1] == best]
        skippable = any(f[i][j] + g[i + 1][j] == best for j in range(m + 1))
        if len(partners) == 1 and not skippable:
            out.append((i, partners[0]))
    return out
