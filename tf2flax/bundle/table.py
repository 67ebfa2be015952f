"""The LevelDB-style table (SSTable) that a checkpoint's ``.index`` file is.

Layout: data blocks, a metaindex block, an index block (each followed by a 5-byte trailer:
compression type + masked CRC32C), then a 48-byte footer ending in a magic number.

Example::

    entries = parse_table(open("model.ckpt.index", "rb").read())
    entries[0]   # (b"", <BundleHeaderProto bytes>)
"""

from __future__ import annotations

import struct

from .coding import DecodeError, crc32c, read_varint, unmask_crc

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5
_NO_COMPRESSION, _SNAPPY = 0, 1
# TensorFlow writes a full key every 16 entries (``block_restart_interval``), so a key is at most the
# bytes stored since its restart point and a block's keys add up to at most 16x the block.
_RESTART_INTERVAL = 16


class SnappyBlockError(DecodeError):
    """A block is snappy-compressed (written by TensorFlow before 1.2)."""


def _block_handle(data: bytes | memoryview, pos: int) -> tuple[int, int, int]:
    offset, pos = read_varint(data, pos)
    size, pos = read_varint(data, pos)
    return offset, size, pos


def _read_block(data: bytes, offset: int, size: int, verify: bool) -> memoryview:
    end = offset + size
    if offset < 0 or size < 8 or end + TRAILER_SIZE > len(data):
        raise DecodeError(f"block handle (offset {offset}, size {size}) is outside the {len(data)}-byte file")
    kind = data[end]
    if verify:
        (stored,) = struct.unpack_from("<I", data, end + 1)
        actual = crc32c(memoryview(data)[offset:end + 1])
        if unmask_crc(stored) != actual:
            raise DecodeError(f"block at offset {offset} fails its CRC32C check")
    if kind == _SNAPPY:
        raise SnappyBlockError(f"block at offset {offset} is snappy-compressed")
    if kind != _NO_COMPRESSION:
        raise DecodeError(f"block at offset {offset} has unknown compression type {kind}")
    return memoryview(data)[offset:end]


def _block_entries(block: memoryview) -> list[tuple[bytes, bytes]]:
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    if num_restarts == 0 or limit < 0:
        raise DecodeError(f"block has an impossible restart count {num_restarts}")
    data = bytes(block[:limit])
    out: list[tuple[bytes, bytes]] = []
    key = b""
    pos = 0
    budget = _RESTART_INTERVAL * limit
    while pos < limit:
        # Three varints; one byte each in nearly every entry, so that case is inlined.
        if data[pos] < 128 and pos + 2 < limit and data[pos + 1] < 128 and data[pos + 2] < 128:
            shared, non_shared, value_len = data[pos], data[pos + 1], data[pos + 2]
            pos += 3
        else:
            shared, pos = read_varint(data, pos, 5)
            non_shared, pos = read_varint(data, pos, 5)
            value_len, pos = read_varint(data, pos, 5)
        end = pos + non_shared + value_len
        if shared > len(key) or end > limit:
            raise DecodeError(f"block entry at byte {pos} overruns its block")
        key = key[:shared] + data[pos:pos + non_shared]
        budget -= len(key)
        if budget < 0:
            raise DecodeError(f"block's keys expand to more than {_RESTART_INTERVAL}x its {limit} bytes "
                              "(prefix-compressed keys that no table writer produces)")
        out.append((key, data[pos + non_shared:end]))
        pos = end
    return out


def parse_table(data: bytes, verify_checksums: bool = True) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a table file's contents, in key order.

    Raises ``DecodeError`` (a ``ValueError``) on any malformed byte; ``SnappyBlockError`` for
    snappy-compressed blocks.
    """
    if len(data) < FOOTER_SIZE:
        raise DecodeError(f"file is {len(data)} bytes, shorter than the {FOOTER_SIZE}-byte table footer")
    footer = memoryview(data)[len(data) - FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, 40)
    if magic != MAGIC:
        raise DecodeError("footer magic number is wrong: not a TensorFlow table file, or truncated")
    meta_offset, meta_size, pos = _block_handle(footer, 0)
    index_offset, index_size, _ = _block_handle(footer, pos)
    # Writers lay out [data blocks][metaindex][index][footer] back to back.
    if (index_offset + index_size + TRAILER_SIZE != len(data) - FOOTER_SIZE
            or meta_offset + meta_size + TRAILER_SIZE != index_offset):
        raise DecodeError("footer's block handles do not match the file's layout (truncated or spliced file)")
    entries: list[tuple[bytes, bytes]] = []
    previous: bytes | None = None
    for _, handle in _block_entries(_read_block(data, index_offset, index_size, verify_checksums)):
        offset, size, end = _block_handle(handle, 0)
        if end != len(handle):
            raise DecodeError("index entry is not a block handle")
        for key, value in _block_entries(_read_block(data, offset, size, verify_checksums)):
            if previous is not None and key <= previous:
                raise DecodeError(f"keys out of order at {key[:40]!r}")
            previous = key
            entries.append((key, value))
    return entries
