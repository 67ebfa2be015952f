"""The optax step count from TensorFlow's counters: ``global_step``, Keras's ``iterations``, or ``beta1_power``.

Example::

    count, source, notes = step_count(ckpt, find_slots(ckpt), count=None, b1=0.9)   # 4, 'beta1_power = 0.9^5', []
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import MappingError
from .slots import Slots, strip_value_suffix


def step_count(ckpt: Any, slots: Slots, count: int | None, b1: float | None) -> tuple[int | None, str, list[str]]:
    """The step count, where it came from, and notes."""
    notes: list[str] = []
    step_key = slots.counters.get("step")
    if count is not None:  # the checkpoint's counters are not read
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise MappingError(f"count={count!r}: expected a step count, an int >= 0")
        return int(count), "given", notes
    step = _whole(_scalar(ckpt, step_key), ckpt, step_key) if step_key else None
    power_key = slots.counters.get("beta1_power")
    if power_key and b1 is not None:
        power = float(_scalar(ckpt, power_key))
        exponent = math.log(power) / math.log(b1) if 0 < power < 1 and 0 < b1 < 1 else float("nan")
        if math.isfinite(exponent) and abs(exponent - round(exponent)) < 1e-2 and power > 1e-30:
            t = round(exponent) - 1
            if step is not None and step != t:
                notes.append(f"{strip_value_suffix(step_key)} is {step} but beta1_power = b1^{t + 1}: "
                             f"count {t} follows beta1_power, which TF's bias correction used")
            return t, f"{strip_value_suffix(power_key)} = {b1}^{t + 1}", notes
        notes.append(f"{strip_value_suffix(power_key)} = {power} is no integer power of b1 = {b1} "
                     "(underflowed, or another b1)")
    if step is not None:
        if power_key and b1 is None:
            notes.append("count taken from the step counter; pass b1= to take it from beta1_power instead")
        return step, strip_value_suffix(step_key), notes
    notes.append("the checkpoint has no step counter: count is not set (pass count=...)")
    return None, "none found", notes


def _whole(value: Any, ckpt: Any, key: str) -> int:
    """A step counter's value as an int: a whole number >= 0 (a NaN, a fraction or a negative count is an
    error naming the tensor)."""
    if isinstance(value, float) and not (math.isfinite(value) and value == math.floor(value)):
        raise MappingError(f"{getattr(ckpt, 'path', '<checkpoint>')}: optimizer counter {strip_value_suffix(key)!r} "
                           f"is {value!r}, not a whole number of steps")
    if not -(1 << 63) <= value < 1 << 63:
        raise MappingError(f"{getattr(ckpt, 'path', '<checkpoint>')}: optimizer counter {strip_value_suffix(key)!r} "
                           f"is {value!r}, larger than any step count (int64)")
    step = int(value)
    if step < 0:
        raise MappingError(f"{getattr(ckpt, 'path', '<checkpoint>')}: optimizer counter {strip_value_suffix(key)!r} "
                           f"is {step}, not a step count (>= 0)")
    return step


def check_count_fits(step: int, dtype: Any, leaf: str, source: str) -> None:
    """Refuse a step count the optax counter ``leaf`` (of ``dtype``, int32 unless x64) cannot hold.

    Example::

        check_count_fits(2**40, np.int32, "0/count", "global_step")     # MappingError
    """
    info = np.iinfo(np.dtype(dtype)) if np.dtype(dtype).kind in "iu" else None
    if info is not None and not info.min <= step <= info.max:
        raise MappingError(f"step count {step} (from {source}) does not fit {leaf} ({np.dtype(dtype).name}, "
                           f"at most {info.max}); pass count=... or enable jax_enable_x64 for an int64 counter")


def _scalar(ckpt: Any, key: str) -> Any:
    """A counter's value; a clear error if it is not a real scalar."""
    value = np.asarray(ckpt.read(key))
    if value.shape != () or value.dtype.kind not in "iuf":
        raise MappingError(f"{getattr(ckpt, 'path', '<checkpoint>')}: optimizer counter {strip_value_suffix(key)!r} "
                           f"is {value.dtype.name} {list(value.shape)}, not a number")
    return value.item()
