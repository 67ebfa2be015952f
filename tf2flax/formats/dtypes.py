"""TensorFlow ``DataType`` enum values and the numpy dtypes their bytes decode to.

Example::

    numpy_dtype(14)   # dtype(bfloat16)
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ..errors import UnsupportedFormatError

DT_STRING = 7
DT_VARIANT = 21
_INT4_TYPES = {29: "int4", 30: "uint4", 31: "int2", 32: "uint2"}

_BY_ENUM: dict[int, np.dtype] = {
    1: np.dtype(np.float32), 2: np.dtype(np.float64), 3: np.dtype(np.int32), 4: np.dtype(np.uint8),
    5: np.dtype(np.int16), 6: np.dtype(np.int8), 7: np.dtype(object), 8: np.dtype(np.complex64),
    9: np.dtype(np.int64), 10: np.dtype(np.bool_), 11: np.dtype(np.int8), 12: np.dtype(np.uint8),
    13: np.dtype(np.int32), 14: np.dtype(ml_dtypes.bfloat16), 15: np.dtype(np.int16),
    16: np.dtype(np.uint16), 17: np.dtype(np.uint16), 18: np.dtype(np.complex128),
    19: np.dtype(np.float16), 22: np.dtype(np.uint32), 23: np.dtype(np.uint64),
}
_ML_DTYPES = {24: "float8_e5m2", 25: "float8_e4m3fn", 26: "float8_e4m3fnuz", 27: "float8_e4m3b11fnuz",
              28: "float8_e5m2fnuz", 33: "float4_e2m1fn", **_INT4_TYPES}
for _enum, _name in _ML_DTYPES.items():
    if hasattr(ml_dtypes, _name):
        _BY_ENUM[_enum] = np.dtype(getattr(ml_dtypes, _name))

_NAMES = {20: "DT_RESOURCE", 21: "DT_VARIANT"}


def numpy_dtype(enum: int, where: str = "") -> np.dtype:
    """The numpy dtype for TensorFlow DataType ``enum``; UnsupportedFormatError if there is none."""
    dtype = _BY_ENUM.get(enum)
    if dtype is None:
        name = _NAMES.get(enum, f"DataType {enum}")
        raise UnsupportedFormatError(f"{where}: {name} tensors cannot be read as numpy arrays")
    return dtype


def is_supported(enum: int) -> bool:
    """Whether tensors of DataType ``enum`` can be read as numpy arrays."""
    return enum in _BY_ENUM


def is_sub_byte(enum: int) -> bool:
    """INT4/UINT4/INT2/UINT2 are stored one element per byte (low bits)."""
    return enum in _INT4_TYPES


def stored_itemsize(enum: int) -> int:
    """Bytes one element takes on disk (1 for the sub-byte integer types)."""
    return 1 if is_sub_byte(enum) else numpy_dtype(enum).itemsize
