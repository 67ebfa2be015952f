"""How a parameter's load plan becomes its slot's: swap each checkpoint tensor for the slot, keep the rest.

Sources nest (regions of concatenations of stacks of tensors, seen through transforms); ``rebase``
walks any of them, the mapping engine's present and future source types alike (every dataclass field
that holds a source), and swaps each :class:`~tf2flax.plan.TensorSource` for its slot.

Example::

    used: set[str] = set()
    slot_source = rebase(plan.entries["params/d1/kernel"].source, lambda key: key + "/Adam", used)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from ..mapping.build import split_axis
from ..plan import Cast, ConcatSource, PlanEntry, TensorSource
from ..regions import Index
from .slots import SlotKey, strip_value_suffix


@dataclasses.dataclass(frozen=True)
class ValueSource:
    """A value known without reading the checkpoint (the step count)."""

    value: np.ndarray
    label: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.value.dtype

    def read(self, index: Index) -> np.ndarray:
        return self.value[index]

    def describe(self) -> str:
        return self.label


@dataclasses.dataclass(frozen=True)
class Scale:
    """``x * factor``; region-aware (Keras SGD's momentum is ``-learning_rate`` x optax's trace)."""

    region_aware = True

    factor: float

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def out_dtype(self, dtype: np.dtype) -> np.dtype:
        return dtype

    def apply(self, array: np.ndarray) -> np.ndarray:
        return (array * np.asarray(self.factor, array.dtype)).astype(array.dtype)

    def source_index(self, index: Index) -> Index:
        return index


def rebase(source: Any, slot_of: Callable[[str], SlotKey], used: set[str]) -> Any:
    """``source`` with every checkpoint tensor replaced by its slot (``slot_of(key)``), structure kept."""
    if isinstance(source, TensorSource):
        slot = slot_of(source.name)
        if not isinstance(slot, str):  # slots saved per part of a variable saved whole
            used.update(slot)
            parts = tuple(TensorSource(source.reader, k) for k in slot)
            axis = split_axis(tuple(source.shape), [p.shape for p in parts], None,
                              f"the slots of {strip_value_suffix(source.name)!r}", list(slot))
            return ConcatSource(parts, axis)
        used.add(slot)
        changes = {"name": slot}
        if hasattr(source, "label"):
            changes["label"] = strip_value_suffix(slot)
        return dataclasses.replace(source, **changes)
    if isinstance(source, PlanEntry):
        return dataclasses.replace(source, source=rebase(source.source, slot_of, used),
                                   transforms=tuple(t for t in source.transforms if not isinstance(t, Cast)))
    if isinstance(source, (tuple, list)):
        return type(source)(rebase(s, slot_of, used) for s in source)
    if dataclasses.is_dataclass(source) and not isinstance(source, type):
        changes = {f.name: rebase(getattr(source, f.name), slot_of, used) for f in dataclasses.fields(source)
                   if _holds_source(getattr(source, f.name))}
        return dataclasses.replace(source, **changes) if changes else source
    return source


def _holds_source(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return any(_holds_source(v) for v in value)
    return isinstance(value, (TensorSource, PlanEntry)) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type) and hasattr(value, "describe"))
