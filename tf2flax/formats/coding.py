"""Low-level encodings of the bundle format: varints and masked CRC32C.

Example::

    value, pos = read_varint(b"\\x96\\x01", 0)   # (150, 2)
    unmask_crc(mask_crc(crc32c(b"abc")))
"""

from __future__ import annotations

import concurrent.futures
import os
import threading

import crc32c as _crc32c

_MASK_DELTA = 0xA282EAD8
_POLY = 0x82F63B78  # CRC-32C (Castagnoli), bit-reflected
#: Buffers at least this long are checksummed in pieces on several cores (the binding releases the GIL).
PARALLEL_MIN_BYTES = 8 << 20


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


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32C polynomial (bit-reflected: x^0 is the top bit)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


#: x^(2^k) modulo the polynomial for k = 0..66, enough for any length below 2**64 bytes. zlib wraps
#: its table at 32 entries because x^(2^32) = x for its polynomial; that does not hold for CRC-32C's,
#: so the table is as long as the lengths it serves and is never wrapped.
_X2N = [1 << 30]
for _ in range(66):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


def x8n_mod_p(nbytes: int) -> int:
    """x^(8 * nbytes) modulo the CRC-32C polynomial (bit-reflected), by square-and-multiply.

    Example::

        x8n_mod_p(0) == 1 << 31   # x^0
    """
    if not 0 <= nbytes < 1 << 64:
        raise ValueError(f"length {nbytes} is outside 0..2**64-1")
    p, n, k = 1 << 31, nbytes, 3  # k starts at 3: 2^3 bits per byte
    while n:
        if n & 1:
            p = _multmodp(_X2N[k], p)
        n >>= 1
        k += 1
    return p


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32C of ``a + b`` from ``crc1 = crc32c(a)``, ``crc2 = crc32c(b)`` and ``len(b)`` (zlib's method),
    right for any ``len(b)`` below 2**64.

    Example::

        crc32c_combine(crc32c(b"ab"), crc32c(b"cd"), 2) == crc32c(b"abcd")
    """
    return _multmodp(x8n_mod_p(len2), crc1) ^ crc2


_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _crc_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1),
                                                          thread_name_prefix="tf2flax-crc")
        return _pool


def crc32c_parallel(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C of a large buffer, in pieces on every core, joined with :func:`crc32c_combine`.

    Example::

        crc32c_parallel(memoryview(big_array).cast("B")) == crc32c(big_array)
    """
    view = memoryview(data).cast("B")
    workers = min(os.cpu_count() or 1, len(view) // (PARALLEL_MIN_BYTES // 2))
    if workers < 2 or threading.current_thread().name.startswith("tf2flax-crc"):
        return crc32c(view)
    step = -(-len(view) // workers)
    pieces = [view[i:i + step] for i in range(0, len(view), step)]
    futures = [_crc_pool().submit(crc32c, piece) for piece in pieces[1:]]
    crc = crc32c(pieces[0])
    for piece, future in zip(pieces[1:], futures):
        crc = crc32c_combine(crc, future.result(), len(piece))
    return crc


def mask_crc(crc: int) -> int:
    """TensorFlow's CRC masking: rotate right 15 bits, add a constant."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    """Inverse of :func:`mask_crc`."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
