"""``infer_mapping``: the assignment map for a checkpoint and a target tree, decided or refused.

1. Hints first: the user's map entries (``AutoMap(map=...)``) and every target path that is itself a
   checkpoint name of the same shape (after ``rules``/``preset``) are pinned; ``AutoMap(leave=...)`` targets stay unset.
2. The rest are layers (see ``candidates.py``). A target layer whose leaves have a leading layer axis
   and that no single checkpoint layer fits is a *scanned* layer: it takes ``L`` sibling checkpoint
   layers indexed ``0 .. L-1``, stacked with ``{i}`` (``stacking.py``).
3. One global matching per group of interchangeable layers (``match.py``): score = name similarity +
   order evidence. A pair is decided when forbidding it costs at least :data:`MARGIN`; otherwise the
   target is undecided, and nothing is loaded: :meth:`AutoMapping.check` raises a ``MappingError``
   listing every undecided or missing target with its best candidates and why.

Example::

    auto = infer_mapping(ckpt, flatten_targets(nnx.state(model)))
    print(auto.summary())
    auto.check()                      # MappingError unless every target leaf is decided
    plan = build_plan(ckpt, auto.mapping, targets, transforms=auto.transforms)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from ...errors import MappingError
from ...patterns import compile_pattern
from ...targets import TargetLeaf
from ..assignment import TargetVars, assign, normalize
from ..names import CheckpointNames, PartAxis
from ..presets import Preset, get_preset
from ..rules import RulesSpec, compile_rules
from ..stacking import LAYER, Stacking
from ..transforms import TransformSpecs
from .candidates import (Fit, Layer, NameScores, checkpoint_layers, fit_layer, order_pairs, sibling_lists,
                         target_layers)
from .match import assign_with_margins
from .report import AutoMapping, Decision, Undecided
from .tokens import index_spans, template

MARGIN = 0.25
ORDER_WEIGHT = 1.0


@dataclasses.dataclass(frozen=True)
class AutoMap:
    """``mapping="auto"`` with hints: ``map`` (assignment-map entries pinned as given) and ``leave``
    (regexes of target paths that stay unset, e.g. a new head).

    Example::

        tf2flax.init_params(ckpt, AutoMap(map={"dense_3/": "head/"}, leave=[r"cls/.*"]), nnx.state(model))
    """

    map: Any = None
    leave: Sequence[str] = ()


def as_auto(mapping: Any) -> AutoMap | None:
    """The :class:`AutoMap` that ``mapping`` asks for (``"auto"`` or an AutoMap), else None."""
    if isinstance(mapping, AutoMap):
        return mapping
    if isinstance(mapping, str) and mapping == "auto":
        return AutoMap()
    return None


def infer_mapping(ckpt: Any, targets: Mapping[str, TargetLeaf], hints: AutoMap | None = None, *,
                  rules: RulesSpec | None = None, preset: str | Preset | None = None,
                  transforms: Mapping[Any, Any] | None = None, part_axis: PartAxis = None,
                  order: Mapping[str, int] | None = None) -> AutoMapping:
    """The inferred mapping (decided pairs, undecided targets, evidence); reads no tensor data.
    ``order``: target leaf path -> rank, when the target knows its definition order (an nnx.Module)."""
    hints = hints or AutoMap()
    preset = get_preset(preset)
    stages = [preset.rules_for(list(ckpt.names))] if preset else []
    stages.append(compile_rules(rules))
    names = CheckpointNames(ckpt, stages, None, part_axis, skip=preset.skip if preset else None)
    tvars = TargetVars(targets)
    specs = TransformSpecs(transforms, tvars.path_of)
    given_transforms = {tvars.path_of(k): v for k, v in (transforms or {}).items()}

    pinned_pairs, pinned_rows, used_keys = _pins(hints, names, tvars, targets)
    pinned = {t for t, _ in pinned_rows}
    leave = [compile_pattern(p, "AutoMap leave") for p in hints.leave]
    left = {p for p in targets if p not in pinned and any(r.fullmatch(p) for r in leave)}

    sources = checkpoint_layers(ckpt, names, stages, exclude=used_keys)
    tlayers = target_layers(targets, exclude=pinned | left, order=order)
    scores = NameScores([*sources, *tlayers])
    result = AutoMapping(pinned=pinned_pairs, pinned_rows=pinned_rows, left=sorted(left),
                         given_transforms=given_transforms,
                         rules=rules, preset=preset.name if preset else None)
    compat, reasons = _fits(tlayers, sources, specs)
    plain = {ti for ti, _ in compat}
    taken = _stacked(result, tlayers, sources, [ti for ti in range(len(tlayers)) if ti not in plain], scores, specs)
    compat = {k: v for k, v in compat.items() if k[1] not in taken}
    in_order = order_pairs(tlayers, sources, compat)
    _plain(result, tlayers, sources, compat, reasons, in_order, scores, skip=set(result.stacked_targets))
    result.unused_layers = sorted(s.path for si, s in enumerate(sources)
                                  if si not in result.used_sources and si not in taken)
    return result


def _pins(hints: AutoMap, names: CheckpointNames, tvars: TargetVars, targets: Mapping[str, TargetLeaf]
          ) -> tuple[list[tuple[str, Any]], list[tuple[str, str]], set[str]]:
    """The pinned map entries (the hints', then target paths that are checkpoint names of the same
    shape), ``(target leaf, checkpoint name)`` per leaf they load, and the checkpoint keys they read."""
    errors: list[str] = []
    pairs: list[tuple[str, Any]] = list(normalize(hints.map)) if hints.map is not None else []
    loads = assign(pairs, names, tvars, errors, [], Stacking()) if pairs else []
    if errors:
        raise MappingError("auto mapping hints: " + "; ".join(errors))
    rows = [(leaf, load.resolved.name) for load in loads for leaf in load.leaves]
    pinned = {leaf for leaf, _ in rows}
    used_keys = {k for load in loads for k in load.resolved.keys}
    pairs = [(str(k), tvars.path_of(t) if not isinstance(t, (str, list)) else t) for k, t in pairs]
    skipped = {t.key for t in names.tensors if t.skipped}
    for path, leaf in targets.items():
        if path in pinned:
            continue
        try:
            resolved = names.resolve(path)
        except MappingError:
            continue
        if (resolved is not None and not set(resolved.keys) & (used_keys | skipped)
                and tuple(resolved.source.shape) == tuple(leaf.shape)):
            pairs.append((path, path))
            rows.append((path, path))
            pinned.add(path)
            used_keys |= set(resolved.keys)
    return pairs, rows, used_keys


def _fits(tlayers: list[Layer], sources: list[Layer], specs: TransformSpecs
          ) -> tuple[dict[tuple[int, int], dict[str, Fit]], dict[tuple[int, int], str]]:
    """Which checkpoint layer can load which target layer (``{(t, s): {kind: Fit}}``), and why the
    others cannot. Only layers with the same leaf kinds (or two one-parameter layers) are tried."""
    compat: dict[tuple[int, int], dict[str, Fit]] = {}
    reasons: dict[tuple[int, int], str] = {}
    by_kinds: dict[frozenset[str], list[int]] = {}
    singles: list[int] = []
    for si, s in enumerate(sources):
        by_kinds.setdefault(frozenset(s.leaves), []).append(si)
        if len(s.leaves) == 1:
            singles.append(si)
    for ti, t in enumerate(tlayers):
        for si in sorted({*by_kinds.get(frozenset(t.leaves), []), *(singles if len(t.leaves) == 1 else [])}):
            s = sources[si]
            fit = fit_layer(s, t, specs)
            if isinstance(fit, str):
                reasons[(ti, si)] = fit
            elif s.refused or t.refused:
                reasons[(ti, si)] = s.refused or t.refused
            else:
                compat[(ti, si)] = fit
    return compat, reasons


def _plain(result: AutoMapping, tlayers: list[Layer], sources: list[Layer], compat: dict, reasons: dict,
           order: dict, scores: NameScores, skip: set[int]) -> None:
    """Match the remaining target layers to single checkpoint layers, component by component."""
    parent = list(range(len(tlayers) + len(sources)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for ti, si in compat:
        parent[find(ti)] = find(len(tlayers) + si)
    components: dict[int, tuple[list[int], list[int]]] = {}
    for ti in range(len(tlayers)):
        if ti in skip:
            continue
        if not any(k[0] == ti for k in compat):
            result.undecided.append(_missing(tlayers[ti], sources, reasons, ti, scores))
            continue
        components.setdefault(find(ti), ([], []))[0].append(ti)
    for si in range(len(sources)):
        root = find(len(tlayers) + si)
        if root in components:
            components[root][1].append(si)
    ordered = ({m for _, members in sibling_lists(tlayers) for m in members},
               {m for _, members in sibling_lists(sources) for m in members})
    for rows, cols in components.values():
        by_name = np.full((len(rows), len(cols)), -np.inf)
        by_order = np.zeros((len(rows), len(cols)))
        for r, ti in enumerate(rows):
            for c, si in enumerate(cols):
                if (ti, si) in compat:
                    by_name[r, c] = scores(tlayers[ti], sources[si])
                    by_order[r, c] = ORDER_WEIGHT if (ti, si) in order else 0.0
        matrix = by_name + by_order
        assigned, gaps = assign_with_margins(matrix)
        # Order is evidence, not a verdict: where the names alone clearly pick another layer, the two
        # disagree (a model that defines its layers in another order), and nothing is decided.
        named, named_gaps = assign_with_margins(by_name) if by_order.any() else (assigned, gaps)
        for r, (c, gap) in enumerate(zip(assigned, gaps)):
            ti = rows[r]
            t = tlayers[ti]
            ranked = _ranked(matrix[r])
            candidates = [(sources[cols[c2]].path, float(matrix[r, c2]),
                           _evidence(t, sources[cols[c2]], scores, order.get((ti, cols[c2]))))
                          for c2 in ranked[:3]]
            if c is None:
                result.undecided.append(Undecided(t.path, _leaf_names(t), candidates,
                                                  "every checkpoint layer that fits is better used by another target"))
                continue
            si = cols[c]
            if named[r] != c and named_gaps[r] >= MARGIN and named[r] is not None:
                result.undecided.append(Undecided(
                    t.path, _leaf_names(t), candidates,
                    f"names and order disagree: by name it is {sources[cols[named[r]]].path!r} (margin "
                    f"{named_gaps[r]:.2f}), by order {sources[si].path!r}"))
                continue
            if gap < MARGIN:
                result.undecided.append(Undecided(t.path, _leaf_names(t), candidates,
                                                  _why(t, ti, [sources[cols[c2]] for c2 in ranked], ordered, sources,
                                                       matrix[r, ranked], gap)))
                continue
            s = sources[si]
            evidence = _evidence(t, s, scores, order.get((ti, si)))
            n = len(ranked)
            evidence.insert(0, f"shape: {t.signature()} ({n} checkpoint layer{'s' if n > 1 else ''} fit)")
            result.decisions.append(Decision(t.path, s.path, list(compat[(ti, si)].values()), evidence,
                                             _confidence(gap), gap))
            result.used_sources.add(si)


def _ranked(row: np.ndarray) -> list[int]:
    """The columns a row can take, best score first."""
    return sorted(np.flatnonzero(np.isfinite(row)).tolist(), key=lambda c: -row[c])


def _confidence(gap: float) -> float:
    """0.5 at no margin, 1.0 from a margin of 1 (an order pair, or the only fitting layer) on."""
    return round(min(1.0, 0.5 + gap / 2), 3)


def _leaf_names(layer: Layer) -> list[str]:
    return sorted(leaf.name for leaf in layer.leaves.values())


def _evidence(t: Layer, s: Layer, scores: NameScores, order: str | None) -> list[str]:
    shared = sorted(t.tokens & s.tokens)
    out = [f"names: {scores(t, s):.2f} similar" + (f" (shared: {', '.join(shared)})" if shared else "")]
    if order:
        out.append(order)
    return out


def _why(t: Layer, ti: int, ranked: list[Layer], ordered: tuple[set[int], set[int]], sources: list[Layer],
         values: np.ndarray, gap: float) -> str:
    n = len(ranked)
    close = [s for s, v in zip(ranked, values) if values[0] - v < MARGIN]
    t_ordered = ti in ordered[0]
    pos = {id(s): i for i, s in enumerate(sources)}
    s_ordered = all(pos[id(s)] in ordered[1] for s in close)
    head = f"{n} checkpoint layers fit {t.signature()}"
    if len(close) > 1:
        if not t_ordered:
            return (f"{head}, and {len(close)} are about as likely by name: only order tells them apart, and the "
                    f"target has no order (its path {t.path!r} has no layer index)")
        if not s_ordered:
            return (f"{head}, and {len(close)} are about as likely by name: only order tells them apart, and the "
                    "checkpoint has no order for them")
        return (f"{head}, and {len(close)} are about as likely by name; their order does not pair them one to one "
                "(the two sides have different numbers of such layers?)")
    return f"{head}; the best explanation of all targets beats the next by only {gap:.2f} (< {MARGIN})"


def _missing(t: Layer, sources: list[Layer], reasons: dict, ti: int, scores: NameScores) -> Undecided:
    ranked = sorted(range(len(sources)), key=lambda si: -scores(t, sources[si]))[:3]
    candidates = [(sources[si].path, scores(t, sources[si]),
                   ["cannot load it: " + reasons.get((ti, si), f"its leaves are {sorted(sources[si].leaves)}, "
                                                                f"the target's {sorted(t.leaves)}")])
                  for si in ranked]
    refused = [s for si, s in enumerate(sources) if s.refused and reasons.get((ti, si)) == s.refused]
    if refused:
        why = f"the checkpoint layer that fits, {refused[0].path!r}, is refused: {refused[0].refused}"
    elif t.refused:
        why = t.refused
    else:
        why = f"no checkpoint layer has leaves {t.signature()} (a layer the checkpoint does not have?)"
        others = [s for s in sources if s.refused]
        if others:
            why += f"; the checkpoint's {others[0].path!r} is refused: {others[0].refused}"
    return Undecided(t.path, _leaf_names(t), candidates, why)


def _stacked(result: AutoMapping, tlayers: list[Layer], sources: list[Layer], rows: list[int], scores: NameScores,
             specs: TransformSpecs) -> set[int]:
    """Match scanned target layers (a leading layer axis) to runs of sibling checkpoint layers 0..L-1;
    returns the checkpoint layers they take."""
    stacks = _stack_candidates(sources)
    options: dict[int, list[tuple[int, dict[str, Fit]]]] = {}
    for ti in rows:
        t = tlayers[ti]
        lengths = {leaf.shape[0] if leaf.shape else None for leaf in t.leaves.values()}
        if len(lengths) != 1 or None in lengths:
            continue
        size = lengths.pop()
        for k, (members, patterns) in enumerate(stacks):
            if len(members) != size:
                continue
            fits = _stack_fit(t, [sources[m] for m in members], patterns, specs)
            if fits is not None:
                options.setdefault(ti, []).append((k, fits))
    if not options:
        return set()
    rows = sorted(options)
    cols = sorted({k for opts in options.values() for k, _ in opts})
    matrix = np.full((len(rows), len(cols)), -np.inf)
    for r, ti in enumerate(rows):
        for k, _ in options[ti]:
            matrix[r, cols.index(k)] = scores(tlayers[ti], sources[stacks[k][0][0]])
    assigned, gaps = assign_with_margins(matrix)
    taken: set[int] = set()
    for r, (c, gap) in enumerate(zip(assigned, gaps)):
        ti = rows[r]
        t = tlayers[ti]
        if c is None:
            continue
        k = cols[c]
        members = stacks[k][0]
        first = sources[members[0]]
        if gap < MARGIN or taken & set(members):
            ranked = _ranked(matrix[r])
            result.undecided.append(Undecided(
                t.path, _leaf_names(t),
                [(_stack_label(stacks[cols[c2]][1]), float(matrix[r, c2]), []) for c2 in ranked[:3]],
                f"scanned layer ({len(members)} layers): several runs of checkpoint layers fit and names do not "
                "settle which"))
            result.stacked_targets.add(ti)
            continue
        fits = dict(options[ti])[k]
        evidence = [f"scanned: leading axis of {len(members)} layers <- {len(members)} checkpoint layers indexed "
                    f"0..{len(members) - 1}", *_evidence(t, first, scores, None)]
        result.decisions.append(Decision(t.path, _stack_label(stacks[k][1]),
                                         list(fits.values()), evidence, _confidence(gap), gap, stacked=True))
        result.stacked_targets.add(ti)
        taken |= set(members)
    return taken


def _stack_label(patterns: Mapping[str, str]) -> str:
    """A run of checkpoint layers by its ``{i}`` path: ``bert/encoder/layer_{i}/attention/self/query``."""
    return min(patterns.values()).rsplit("/", 1)[0]


def _stack_candidates(sources: list[Layer]) -> list[tuple[list[int], dict[str, str]]]:
    """Runs of checkpoint layers whose names differ in one index only, exactly ``0 .. L-1``:
    ``(members in index order, {kind: name pattern with {i}})``."""
    groups: dict[tuple, dict[int, int]] = {}
    for si, s in enumerate(sources):
        if s.refused:
            continue
        for scheme, (parent, leaf_names) in enumerate(s.schemes):
            tmpl, idx = template(parent)
            for j in range(len(idx)):
                key = (scheme, tmpl, j, idx[:j] + idx[j + 1:])
                groups.setdefault(key, {})
                if idx[j] in groups[key]:
                    groups[key][idx[j]] = -1
                else:
                    groups[key][idx[j]] = si
    out, seen = [], set()
    for (scheme, tmpl, j, _), by_index in groups.items():
        if len(by_index) < 2 or sorted(by_index) != list(range(len(by_index))) or -1 in by_index.values():
            continue
        members = [by_index[i] for i in range(len(by_index))]
        if tuple(members) in seen:
            continue
        patterns = _patterns([sources[m] for m in members], scheme, j)
        if patterns is not None:
            seen.add(tuple(members))
            out.append((members, patterns))
    return out


def _patterns(members: list[Layer], scheme: int, j: int) -> dict[str, str] | None:
    """``{kind: name with {i}}`` shared by all ``members`` (None if their names do not agree)."""
    out: dict[str, str] | None = None
    for layer in members:
        parent, leaf_names = layer.schemes[scheme]
        start, end = index_spans(parent)[j]
        pats = {kind: parent[:start] + LAYER + parent[end:] + name[len(parent):] for kind, name in leaf_names.items()
                if name.startswith(parent)}
        if len(pats) != len(leaf_names) or (out is not None and pats != out):
            return None
        out = pats
    return out


def _stack_fit(t: Layer, members: list[Layer], patterns: dict[str, str], specs: TransformSpecs
               ) -> dict[str, Fit] | None:
    """How a run of checkpoint layers loads scanned target ``t`` (per kind), or None."""
    size = len(members)
    per_layer = Layer(t.side, t.path, {k: dataclasses.replace(leaf, shape=leaf.shape[1:])
                                       for k, leaf in t.leaves.items()}, t.tokens)
    out: dict[str, Fit] = {}
    for s in members:
        fit = fit_layer(s, per_layer, TransformSpecs(None, str))
        if isinstance(fit, str):
            return None
        for kind, f in fit.items():
            spec = ("reshape", [size, *f.spec[1]]) if f.spec else None
            if specs.find(t.leaves[kind].name) is not None:
                spec = None
            out[kind] = Fit(patterns[kind], t.leaves[kind].name, spec, f.how)
    return out
