"""The LevelDB-style table (SSTable) that a checkpoint's ``.index`` file (and a V1 checkpoint file) is.

Layout: data blocks, a metaindex block, an index block (each followed by a 5-byte trailer:
compression type + masked CRC32C), then a 48-byte footer ending in a magic number. A block's
type is 0 (stored as is) or 1 (snappy-compressed; TensorFlow builds with snappy write these); the
CRC covers the stored bytes and the type byte, as TensorFlow checks it.

Example::

    entries = parse_table(open("model.ckpt.index", "rb").read())
    entries[0]   # (b"", <BundleHeaderProto bytes>)
    table = TableFile(lambda start, stop: store.read(name, start, stop), store.read(name, -FOOTER_SIZE))
    table.get(b"")   # one entry, reading the footer, the index block and one data block
"""

from __future__ import annotations

import bisect
import struct
from typing import Callable

from .coding import DecodeError, crc32c, read_varint, unmask_crc

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5
_NO_COMPRESSION, _SNAPPY = 0, 1
# Snappy expands at most ~22x (a 3-byte copy of 64 bytes); a block claiming more is corrupt, and
# refusing it before decompressing bounds the memory a small hostile file can cost.
_MAX_SNAPPY_EXPANSION = 32
# TensorFlow writes a full key every 16 entries (``block_restart_interval``), so a key is at most the
# bytes stored since its restart point and a block's keys add up to at most 16x the block.
_RESTART_INTERVAL = 16
#: What parsed entries may cost, per byte of the table as stored (before snappy): a key and a value
#: of their lengths plus ENTRY_COST for the objects holding them. Real tables cost 2-12x their
#: bytes (a key shared but for a byte stands for up to 16 stored ones, snappy saves 2-3x more);
#: prefix-compressed keys in a snappy block that expands 32x could cost 500x, and are refused.
ENTRY_BUDGET_PER_BYTE = 64
#: Bytes a table parsed whole may cost beyond ENTRY_BUDGET_PER_BYTE per stored byte.
ENTRY_BUDGET_SLACK = 4 << 20
#: The same for one block read on its own: small, so that many tiny blocks cannot add it up.
BLOCK_BUDGET_SLACK = 4 << 10
#: Memory of one parsed entry beyond its key and value bytes (two bytes objects, a tuple, a list slot).
ENTRY_COST = 128


class EntryBudget:
    """Bytes that parsed (key, value) entries may still take; charged as entries are made.

    Example::

        budget = EntryBudget.for_stored(len(data))
        budget.charge(len(key) + len(value))
    """

    def __init__(self, limit: int):
        self.left = limit

    @classmethod
    def for_stored(cls, stored_bytes: int, slack: int = ENTRY_BUDGET_SLACK) -> "EntryBudget":
        """The budget of a table (or, with ``BLOCK_BUDGET_SLACK``, a block) of ``stored_bytes`` as stored."""
        return cls(ENTRY_BUDGET_PER_BYTE * stored_bytes + slack)

    def charge(self, nbytes: int) -> None:
        self.left -= nbytes + ENTRY_COST
        if self.left < 0:
            raise DecodeError(f"its entries expand to more than {ENTRY_BUDGET_PER_BYTE}x the table's stored bytes "
                              "(prefix-compressed keys or snappy blocks that no table writer produces)")


def _block_handle(data: bytes | memoryview, pos: int) -> tuple[int, int, int]:
    offset, pos = read_varint(data, pos)
    size, pos = read_varint(data, pos)
    return offset, size, pos


def _uncompress(stored: memoryview, offset: int) -> memoryview:
    import cramjam

    length, _ = read_varint(stored, 0, 5)  # snappy's preamble: the uncompressed length
    if length > _MAX_SNAPPY_EXPANSION * len(stored) + 64:
        raise DecodeError(f"snappy block at offset {offset} claims {length} bytes from {len(stored)}: corrupt")
    try:
        out = cramjam.snappy.decompress_raw(bytes(stored))
    except cramjam.DecompressionError as e:
        raise DecodeError(f"snappy block at offset {offset} does not decompress: {e}") from None
    if len(out) != length:
        raise DecodeError(f"snappy block at offset {offset} decompresses to {len(out)} bytes, not {length}")
    return memoryview(bytes(out))


def check_block(raw: bytes | memoryview, offset: int, verify: bool) -> memoryview:
    """The contents of one block from its stored bytes plus 5-byte trailer (``raw``), which starts
    at byte ``offset`` of the file: CRC checked (when ``verify``), snappy blocks uncompressed."""
    raw = memoryview(raw)
    end = len(raw) - TRAILER_SIZE
    if end < 0:
        raise DecodeError(f"block at offset {offset} is shorter than its trailer")
    kind = raw[end]
    if verify:
        (stored,) = struct.unpack_from("<I", raw, end + 1)
        if unmask_crc(stored) != crc32c(raw[:end + 1]):
            raise DecodeError(f"block at offset {offset} fails its CRC32C check")
    if kind == _SNAPPY:
        block = _uncompress(raw[:end], offset)
    elif kind == _NO_COMPRESSION:
        block = raw[:end]
    else:
        raise DecodeError(f"block at offset {offset} has unknown compression type {kind}")
    if len(block) < 8:
        raise DecodeError(f"block at offset {offset} has {len(block)} bytes, too few for a block")
    return block


def _read_block(data: bytes, offset: int, size: int, verify: bool) -> memoryview:
    end = offset + size
    if offset < 0 or end + TRAILER_SIZE > len(data):
        raise DecodeError(f"block handle (offset {offset}, size {size}) is outside the {len(data)}-byte file")
    return check_block(memoryview(data)[offset:end + TRAILER_SIZE], offset, verify)


def _block_entries(block: memoryview, budget: EntryBudget) -> list[tuple[bytes, bytes]]:
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    if num_restarts == 0 or limit < 0:
        raise DecodeError(f"block has an impossible restart count {num_restarts}")
    data = bytes(block[:limit])
    out: list[tuple[bytes, bytes]] = []
    key = b""
    pos = 0
    keys = _RESTART_INTERVAL * limit
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
        keys -= shared + non_shared
        if keys < 0:
            raise DecodeError(f"block's keys expand to more than {_RESTART_INTERVAL}x its {limit} bytes "
                              "(prefix-compressed keys that no table writer produces)")
        budget.charge(shared + non_shared + value_len)  # before the key is built
        key = key[:shared] + data[pos:pos + non_shared]
        out.append((key, data[pos + non_shared:end]))
        pos = end
    return out


def parse_table(data: bytes, verify_checksums: bool = True) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a table file's contents, in key order.

    Raises ``DecodeError`` (a ``ValueError``) on any malformed byte.
    """
    if len(data) < FOOTER_SIZE:
        raise DecodeError(f"file is {len(data)} bytes, shorter than the {FOOTER_SIZE}-byte table footer")
    index_offset, index_size = parse_footer(memoryview(data)[len(data) - FOOTER_SIZE:], len(data))
    entries: list[tuple[bytes, bytes]] = []
    previous: bytes | None = None
    budget = EntryBudget.for_stored(len(data))  # counted against stored bytes, before anything expands
    for _, handle in _block_entries(_read_block(data, index_offset, index_size, verify_checksums), budget):
        offset, size, end = _block_handle(handle, 0)
        if end != len(handle):
            raise DecodeError("index entry is not a block handle")
        for key, value in _block_entries(_read_block(data, offset, size, verify_checksums), budget):
            if previous is not None and key <= previous:
                raise DecodeError(f"keys out of order at {key[:40]!r}")
            previous = key
            entries.append((key, value))
    return entries


def is_table_footer(footer: bytes | memoryview) -> bool:
    """Whether the last 48 bytes of a file end in the table magic number (a cheap sniff)."""
    return len(footer) == FOOTER_SIZE and struct.unpack_from("<Q", footer, 40)[0] == MAGIC


def parse_footer(footer: bytes | memoryview, file_size: int | None = None) -> tuple[int, int]:
    """(offset, size) of the index block, from a table's 48-byte footer.

    Writers lay out [data blocks][metaindex][index][footer] back to back, so the footer implies the
    file's size; ``file_size``, when known, must match it.
    """
    if not is_table_footer(footer):
        raise DecodeError("footer magic number is wrong: not a TensorFlow table file, or truncated")
    meta_offset, meta_size, pos = _block_handle(footer, 0)
    index_offset, index_size, _ = _block_handle(footer, pos)
    implied = index_offset + index_size + TRAILER_SIZE + FOOTER_SIZE
    if meta_offset + meta_size + TRAILER_SIZE != index_offset or (file_size is not None and implied != file_size):
        raise DecodeError("footer's block handles do not match the file's layout (truncated or spliced file)")
    return index_offset, index_size


class TableFile:
    """A table read block by block: the index block at opening, then each data block on demand.

    ``read(start, stop)`` returns bytes ``[start, stop)`` of the file; ``footer`` is its last 48
    bytes. Keys are found through the index block's separators, as LevelDB does.

    Example::

        table = TableFile(lambda a, b: data[a:b], data[-FOOTER_SIZE:], len(data))
        value = table.get(b"")
    """

    def __init__(self, read: Callable[[int, int], bytes], footer: bytes, file_size: int | None = None,
                 verify_checksums: bool = True):
        self._read = read
        self.verify_checksums = verify_checksums
        index_offset, index_size = parse_footer(footer, file_size)
        self.size = index_offset + index_size + TRAILER_SIZE + FOOTER_SIZE
        raw = read(index_offset, index_offset + index_size + TRAILER_SIZE)
        self._separators: list[bytes] = []
        self.blocks: list[tuple[int, int]] = []
        end = 0
        budget = EntryBudget.for_stored(len(raw), BLOCK_BUDGET_SLACK)
        for separator, handle in _block_entries(check_block(raw, index_offset, verify_checksums), budget):
            offset, size, stop = _block_handle(handle, 0)
            if stop != len(handle) or offset < end or offset + size + TRAILER_SIZE > index_offset:
                raise DecodeError("index entry is not the handle of a block in order within the file")
            if self._separators and separator <= self._separators[-1]:
                raise DecodeError(f"index keys out of order at {separator[:40]!r}")
            end = offset + size + TRAILER_SIZE
            self._separators.append(separator)
            self.blocks.append((offset, size))

    def block_of(self, key: bytes) -> int | None:
        """The number of the only block that can hold ``key``, or None if no block can."""
        i = bisect.bisect_left(self._separators, key)
        return i if i < len(self.blocks) else None

    def block(self, i: int) -> list[tuple[bytes, bytes]]:
        """The (key, value) entries of data block ``i``, in key order."""
        offset, size = self.blocks[i]
        entries = _block_entries(check_block(self._read(offset, offset + size + TRAILER_SIZE), offset,
                                             self.verify_checksums),
                                 EntryBudget.for_stored(size + TRAILER_SIZE, BLOCK_BUDGET_SLACK))
        keys = [k for k, _ in entries]
        if any(a >= b for a, b in zip(keys, keys[1:])) or (keys and keys[-1] > self._separators[i]):
            raise DecodeError(f"block at offset {offset}: keys out of order")
        return entries

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or None if the table has no such key."""
        i = self.block_of(key)
        if i is None:
            return None
        for k, value in self.block(i):
            if k == key:
                return value
        return None
