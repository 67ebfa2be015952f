"""CRC-32C combine is right for pieces of any length, including the >= 512 MiB pieces that a 1 GiB
tensor splits into on 2 cores (zlib's 32-entry table wraps, which holds for zlib's polynomial only).

The reference is independent of the code under test: zlib's original GF(2) operator-matrix method
(``gf2_matrix_times`` / ``gf2_matrix_square``, no table, no wrap), and for one size a direct CRC of
real zero bytes streamed through the crc32c package. No multi-GB buffer is allocated.
"""

from __future__ import annotations

import os

import crc32c as crc32c_package
import pytest

from tf2flax.formats.coding import crc32c, crc32c_combine, crc32c_parallel

POLY = 0x82F63B78


def _times(matrix: list[int], vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _square(matrix: list[int]) -> list[int]:
    return [_times(matrix, matrix[n]) for n in range(32)]


def matrix_combine(crc1: int, crc2: int, len2: int) -> int:
    """zlib 1.2.3's crc32_combine, with CRC-32C's polynomial: operators for 1, 2, 4... zero bits."""
    if len2 == 0:
        return crc1
    odd = [POLY] + [1 << n for n in range(31)]   # the operator for one zero bit
    even = _square(odd)                            # two zero bits
    odd = _square(even)                            # four zero bits
    while True:
        even = _square(odd)   # first pass: one zero byte
        if len2 & 1:
            crc1 = _times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _square(even)
        if len2 & 1:
            crc1 = _times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def zeros_crc(length: int, start: int = 0, chunk: int = 16 << 20) -> int:
    """CRC-32C of ``length`` real zero bytes after a CRC of ``start``, streamed in ``chunk`` pieces."""
    zeros = bytes(chunk)
    crc = start
    while length:
        n = min(length, chunk)
        crc = crc32c_package.crc32c(zeros[:n] if n < chunk else zeros, crc)
        length -= n
    return crc


SIZES = sorted({2 ** e + d for e in range(29, 33) for d in (-1, 0, 1, 4095)} | {3 << 29, 5 << 30, 2 ** 32 + 12345,
                                                                                 (1 << 40) + 7, (1 << 63) + 1})


def test_the_reference_agrees_with_direct_crcs_of_small_inputs():
    data = os.urandom(300)
    for split in (0, 1, 7, 150, 299, 300):
        a, b = data[:split], data[split:]
        assert matrix_combine(crc32c(a), crc32c(b), len(b)) == crc32c(data)


@pytest.mark.parametrize("length", SIZES)
def test_combine_matches_the_matrix_reference_for_pieces_of_2_29_to_2_32_bytes(length):
    a = os.urandom(64)
    crc_a = crc32c(a)
    for crc_b in (0, 0xDEADBEEF, crc32c(os.urandom(16))):
        assert crc32c_combine(crc_a, crc_b, length) == matrix_combine(crc_a, crc_b, length), (length, crc_b)


def test_combine_matches_a_direct_crc_of_512_mib_of_real_zeros():
    """A + 512 MiB of zeros, checksummed byte by byte by the crc32c package (streamed, 16 MiB at a time)."""
    a = os.urandom(1000)
    length = 1 << 29
    b_crc = zeros_crc(length)
    assert crc32c_combine(crc32c(a), b_crc, length) == zeros_crc(length, start=crc32c(a))


def test_parallel_crc_of_pieces_is_the_crc_of_the_whole(monkeypatch):
    """The path a read takes: pieces on worker threads, joined by combine (small pieces, same math)."""
    import tf2flax.formats.coding as coding

    monkeypatch.setattr(coding, "PARALLEL_MIN_BYTES", 1 << 12)
    monkeypatch.setattr(coding.os, "cpu_count", lambda: 7)
    data = os.urandom((1 << 16) + 13)
    assert crc32c_parallel(data) == crc32c(data)


def test_lengths_beyond_64_bits_are_refused():
    with pytest.raises(ValueError, match="outside"):
        crc32c_combine(1, 2, 1 << 64)
