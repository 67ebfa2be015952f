"""Scanned layers: ``{i}`` in checkpoint names stacks per-layer tensors along a new axis.

- A checkpoint-side ``{i}`` stands for a decimal layer index (``layer_0``, ``block_007``). Mapped to a
  target without ``{i}``, the matches stack: ``{"bert/encoder/layer_{i}/": "params/encoder/layers/"}``
  fills ``params/encoder/layers/attention/self/query/kernel`` of shape ``[L, H, H]`` from
  ``bert/encoder/layer_0/...`` .. ``layer_{L-1}/...``.
- ``stack_axis`` (an int, or ``{target regex: int}``, first full match wins) picks the new axis;
  0 (``nn.scan``'s default) when nothing says otherwise.
- The indices must be exactly ``0 .. L-1``, ``L`` the leaf's size on that axis; a missing or extra
  index is a :class:`~tf2flax.errors.MappingError` that names it.
- ``{i}`` on both sides (``"layer_{i}/": "layers_{i}/"``) renames layer by layer (no stacking).

Example::

    stacking = Stacking(axis={r"target/.*": 1})
    stacking.axis_for("target/encoder/encoder/mlp/wo/kernel", 3)     # 1
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from typing import Callable, Mapping

from ..errors import MappingError
from ..patterns import compile_pattern
from ..plan import Source
from .rules import layer_index

LAYER = "{i}"

StackAxis = int | Mapping[str, int] | None
Fit = Callable[[Source, tuple[int, ...], str], Source]


@dataclasses.dataclass(frozen=True)
class Stacking:
    """The stack axis per target variable, and ``fit``: an optional per-layer adapter (a preset's
    reshape of a layer's tensor to the shape one layer of the target has)."""

    axis: StackAxis = None
    fit: Fit | None = None

    def axis_for(self, var: str, rank: int) -> int:
        """The stack axis of target ``var`` (of rank ``rank``), as a non-negative int."""
        axis = self.axis
        if isinstance(axis, Mapping):
            axis = next((a for pattern, a in axis.items()
                         if compile_pattern(pattern, "stack_axis key").fullmatch(var)), None)
        axis = 0 if axis is None else axis
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise MappingError(f"stack_axis for {var!r} must be an int, got {axis!r}")
        if not -rank <= axis < max(rank, 1) or rank == 0:
            raise MappingError(f"stack_axis {axis} does not fit target {var!r} of rank {rank}")
        return axis % rank


def check_stack_axis(axis: StackAxis) -> None:
    """Refuse a ``stack_axis`` that is neither an int nor a ``{regex: int}`` dict of valid regexes."""
    if axis is None or (isinstance(axis, int) and not isinstance(axis, bool)):
        return
    if not isinstance(axis, Mapping):
        raise MappingError(f"stack_axis must be an int or a {{target regex: int}} dict, got {axis!r}")
    for pattern, value in axis.items():
        compile_pattern(pattern, "stack_axis key")
        if not isinstance(value, int) or isinstance(value, bool):
            raise MappingError(f"stack_axis[{pattern!r}] must be an int, got {value!r}")


def split_layer(pattern: str, where: str) -> tuple[str, str]:
    """``pattern`` around its one ``{i}``: ``("bert/encoder/layer_", "/attention/...")``."""
    if pattern.count(LAYER) != 1:
        raise MappingError(f"{where}: {pattern!r} must contain '{LAYER}' exactly once")
    before, after = pattern.split(LAYER)
    return before, after


def layer_matches(pattern: str, names: list[str], where: str, scope: bool = False) -> dict[int, str]:
    """``{layer index: the index's text}`` for the ``names`` that ``pattern`` (one ``{i}``) matches.

    ``names`` is sorted; a ``scope`` pattern matches names that start with it. Two spellings of one
    index (``layer_1`` and ``layer_01``) are an error.

    Example::

        layer_matches("layer_{i}/w", ["layer_0/w", "layer_1/w"], "map")     # {0: '0', 1: '1'}
    """
    before, after = split_layer(pattern, where)
    tail = re.compile(r"(\d+)" + re.escape(after) + (r".*" if scope else ""), re.DOTALL)
    found: dict[int, str] = {}
    for name in names[bisect.bisect_left(names, before):]:
        if not name.startswith(before):
            break
        m = tail.fullmatch(name, len(before))
        if m is None:
            continue
        text = m.group(1)
        index = layer_index(text, name)
        other = found.setdefault(index, text)
        if other != text:
            raise MappingError(f"{where}: {before}{other}{after!s} and {before}{text}{after} both match "
                               f"{pattern!r} with layer index {index}")
    return found


def check_indices(found: Mapping[int, object], size: int, pattern: str, var: str, axis: int,
                  shape: tuple[int, ...], where: str) -> None:
    """Refuse layer indices that are not exactly ``0 .. size-1``, naming the missing and extra ones."""
    missing = [i for i in range(size) if i not in found]
    extra = sorted(i for i in found if not 0 <= i < size)
    if not missing and not extra:
        return
    problems = []
    if missing:
        problems.append(f"missing layer index(es) {_spans(missing)}")
    if extra:
        problems.append(f"extra layer index(es) {_spans(extra)}")
    raise MappingError(f"{where}: target {var!r} {list(shape)} stacks {size} layers along axis {axis}, so "
                       f"{pattern!r} must match indices 0..{size - 1}; the checkpoint has "
                       f"{'; '.join(problems)} (found {_spans(sorted(found))})")


def _spans(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``'0-2, 5'``; ``'none'`` for no indices."""
    if not indices:
        return "none"
    out, start, prev = [], indices[0], indices[0]
    for i in indices[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(out)
