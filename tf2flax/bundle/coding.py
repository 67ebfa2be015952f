"""Low-level encodings of the bundle format: varints and masked CRC32C.

Example::

    value, pos = read_varint(b"\\x96\\x01", 0)   # (150, 2)
    unmask_crc(mask_crc(crc32c(b"abc")))
"""

from __future__ import annotations

import crc32c as _crc32c

_MASK_DELTA = 0xA282EAD8


class DecodeError(ValueError):
    """Bytes that do not decode; callers turn it into a CorruptCheckpointError naming the file."""


def read_varint(data: bytes | memoryview, pos: int, max_bytes: int = 10) -> tuple[int, int]:
    """Decode a LEB128 varint at ``pos``; return (value, position after it)."""
    result = shift = 0
    end = min(len(data), pos + max_bytes)
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise DecodeError(f"truncated or overlong varint at byte {pos}")


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32C of ``data`` (any buffer), continuing from ``value``; releases the GIL."""
    return _crc32c.crc32c(data, value)


def mask_crc(crc: int) -> int:
    """TensorFlow's CRC masking: rotate right 15 bits, add a constant."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    """Inverse of :func:`mask_crc`."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
