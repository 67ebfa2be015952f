"""TensorFlow ``DataType`` enum values, their names and the numpy dtypes their bytes decode to.

Names come from the enum alone. numpy dtypes are built on first need, and ``ml_dtypes`` (bfloat16,
float8, int4...; its extension takes about half a second to import in 0.7) is imported only when a
tensor of such a type is met, so listing or reading a float32 checkpoint never loads it.

Example::

    dtype_name(14)    # 'bfloat16' (ml_dtypes not imported)
    numpy_dtype(14)   # dtype(bfloat16) (imports ml_dtypes)
"""

from __future__ import annotations

import functools
import importlib

import numpy as np

from ..errors import UnsupportedFormatError

DT_STRING = 7
DT_VARIANT = 21
_INT4_TYPES = {29: "int4", 30: "uint4", 31: "int2", 32: "uint2"}

# numpy's own types, by name (the quantized types read as their storage integers).
_NUMPY = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 8: "complex64",
          9: "int64", 10: "bool", 11: "int8", 12: "uint8", 13: "int32", 15: "int16", 16: "uint16",
          17: "uint16", 18: "complex128", 19: "float16", 22: "uint32", 23: "uint64"}
# ml_dtypes' types, by attribute name.
_EXTENDED = {14: "bfloat16", 24: "float8_e5m2", 25: "float8_e4m3fn", 26: "float8_e4m3fnuz",
             27: "float8_e4m3b11fnuz", 28: "float8_e5m2fnuz", 33: "float4_e2m1fn", **_INT4_TYPES}
_UNREADABLE = {20: "resource", DT_VARIANT: "variant"}


def dtype_name(enum: int) -> str:
    """The name of TensorFlow DataType ``enum`` as numpy or ml_dtypes spell it (``'string'`` for
    DT_STRING, ``'resource'``/``'variant'`` for handles), from the enum alone: nothing is imported.

    Example::

        dtype_name(1), dtype_name(14), dtype_name(7)   # ('float32', 'bfloat16', 'string')
    """
    if enum == DT_STRING:
        return "string"
    return _NUMPY.get(enum) or _EXTENDED.get(enum) or _UNREADABLE.get(enum) or f"DataType {enum}"


@functools.cache
def _extended_dtype(enum: int) -> np.dtype | None:
    """ml_dtypes' dtype for ``enum``, imported on first need; None if this ml_dtypes lacks it."""
    ml_dtypes = importlib.import_module("ml_dtypes")
    kind = getattr(ml_dtypes, _EXTENDED[enum], None)
    return None if kind is None else np.dtype(kind)


@functools.cache
def _numpy_dtype(enum: int) -> np.dtype | None:
    if enum == DT_STRING:
        return np.dtype(object)
    if enum in _NUMPY:
        return np.dtype(_NUMPY[enum])
    if enum in _EXTENDED:
        return _extended_dtype(enum)
    return None


def numpy_dtype(enum: int, where: str = "") -> np.dtype:
    """The numpy dtype for TensorFlow DataType ``enum``; UnsupportedFormatError if there is none."""
    dtype = _numpy_dtype(enum)
    if dtype is None:
        name = f"DT_{_UNREADABLE[enum].upper()}" if enum in _UNREADABLE else f"DataType {enum}"
        raise UnsupportedFormatError(f"{where}: {name} tensors cannot be read as numpy arrays")
    return dtype


def is_supported(enum: int) -> bool:
    """Whether tensors of DataType ``enum`` can be read as numpy arrays."""
    return _numpy_dtype(enum) is not None


def is_sub_byte(enum: int) -> bool:
    """INT4/UINT4/INT2/UINT2 are stored one element per byte (low bits)."""
    return enum in _INT4_TYPES


def stored_itemsize(enum: int) -> int:
    """Bytes one element takes on disk (1 for the sub-byte integer types)."""
    return 1 if is_sub_byte(enum) else numpy_dtype(enum).itemsize
