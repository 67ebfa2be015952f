"""OrderedCode keys of tensor slices (``EncodeTensorNameSlice`` in TensorFlow).

A key is: NumIncreasing(0), the escaped name, NumIncreasing(rank), then SignedNumIncreasing
(start, length) per dimension, where a whole dimension is (0, -1).

Example::

    key = encode_slice_key("part", ((4, 3), (0, 3)))
    decode_slice_key(key)   # ("part", ((4, 3), (0, 3)))
"""

from __future__ import annotations

from .coding import DecodeError

Extents = tuple[tuple[int, int], ...]


def _num_increasing(v: int) -> bytes:
    body = v.to_bytes((v.bit_length() + 7) // 8, "big") if v else b""
    return bytes([len(body)]) + body


def _read_num_increasing(key: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(key):
        raise DecodeError("slice key ends inside a number")
    n = key[pos]
    if n > 8 or pos + 1 + n > len(key):
        raise DecodeError(f"slice key has a bad number length {n}")
    return int.from_bytes(key[pos + 1:pos + 1 + n], "big"), pos + 1 + n


def _header_mask(n: int) -> int:
    """The n leading 1 bits that mark an n-byte signed number (``kLengthToHeaderBits``)."""
    return ((1 << n) - 1) << (7 * n)


def _signed_num_increasing(v: int) -> bytes:
    n = next(k for k in range(1, 11) if -(1 << (7 * k - 1)) <= v < (1 << (7 * k - 1)))
    return ((v % (1 << (8 * n))) ^ _header_mask(n)).to_bytes(n, "big")


def _read_signed_num_increasing(key: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(key):
        raise DecodeError("slice key ends inside a signed number")
    flip = 0x00 if key[pos] & 0x80 else 0xFF  # negative numbers have the header bits inverted
    head = ((key[pos] ^ flip) << 8) | ((key[pos + 1] ^ flip) if pos + 1 < len(key) else 0)
    n = 16 - (~head & 0xFFFF).bit_length()  # count of leading 1 bits
    if not 1 <= n <= 10 or pos + n > len(key):
        raise DecodeError(f"slice key has a bad signed number at byte {pos}")
    raw = int.from_bytes(key[pos:pos + n], "big") ^ _header_mask(n)
    return (raw - (1 << (8 * n)) if flip else raw), pos + n


def encode_slice_key(name: str, extents: Extents) -> bytes:
    """The checkpoint key of slice ``extents`` ((start, length) per dim, length -1 = whole) of ``name``."""
    escaped = name.encode("utf-8").replace(b"\xff", b"\xff\x00").replace(b"\x00", b"\x00\xff")
    out = bytearray(_num_increasing(0))
    out += escaped + b"\x00\x01"
    out += _num_increasing(len(extents))
    for start, length in extents:
        out += _signed_num_increasing(start) + _signed_num_increasing(length)
    return bytes(out)


def decode_slice_key(key: bytes) -> tuple[str, Extents]:
    """Inverse of :func:`encode_slice_key`; raises ``DecodeError`` on malformed keys."""
    zero, pos = _read_num_increasing(key, 0)
    if zero != 0:
        raise DecodeError("slice key does not start with 0")
    name = bytearray()
    while True:
        if pos + 1 >= len(key):
            raise DecodeError("slice key name is not terminated")
        b = key[pos]
        if b == 0x00:
            nxt = key[pos + 1]
            if nxt == 0x01:
                pos += 2
                break
            if nxt != 0xFF:
                raise DecodeError("slice key name has a bad escape")
            name.append(0)
            pos += 2
        elif b == 0xFF:
            if key[pos + 1] != 0x00:
                raise DecodeError("slice key name has a bad escape")
            name.append(0xFF)
            pos += 2
        else:
            name.append(b)
            pos += 1
    rank, pos = _read_num_increasing(key, pos)
    extents = []
    for _ in range(rank):
        start, pos = _read_signed_num_increasing(key, pos)
        length, pos = _read_signed_num_increasing(key, pos)
        extents.append((start, length))
    if pos != len(key):
        raise DecodeError("slice key has trailing bytes")
    try:
        return name.decode("utf-8"), tuple(extents)
    except UnicodeDecodeError:
        raise DecodeError("slice key name is not UTF-8") from None
