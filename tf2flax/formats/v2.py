"""Reading a TensorFlow V2 checkpoint (tensor bundle) without TensorFlow.

Opening reads only the ``.index`` file; tensors are read on demand, whole or by region, touching
only the bytes (and, for sliced variables, only the slices) that the region needs.

Example::

    ckpt = tf2flax.open_checkpoint("/runs/bert/model.ckpt-1000")
    ckpt.list_variables()[:2]        # [('bert/embeddings/LayerNorm/beta', [768]), ...]
    emb = ckpt.read("bert/embeddings/word_embeddings", (slice(0, 1000),))
"""

from __future__ import annotations

import math
import struct
import time
from typing import Any, Iterator

import numpy as np
from google.protobuf.message import DecodeError as ProtoDecodeError

from ..errors import CorruptCheckpointError, UnsupportedFormatError
from ..regions import Index, index_shape, normalize_index, overlap
from ..storage import Store
from .base import (Checkpoint, ReadStats, StoredTensor, TensorInfo, check_fits_numpy, slice_region, slices_problem,
                   squeezed)
from .coding import DecodeError, crc32c, crc32c_parallel, mask_crc, read_varint
from .dtypes import DT_STRING, is_sub_byte, is_supported, numpy_dtype, stored_itemsize
from .locate import ends_like_a_table
from .object_graph import OBJECT_GRAPH_KEY, ObjectGraph
from .protos import BundleEntryProto, BundleHeaderProto, decode
from .slice_key import decode_slice_key, encode_slice_key
from .table import parse_table

# A local index larger than this has its footer checked before it is read whole.
_SNIFF_ABOVE = 1 << 20
# Reads claiming more bytes than this from files of unknown size (URLs) check the file's extent first.
_PROBE_ABOVE = 64 << 20
# Below this run length a region read fetches the bounding byte range in one request.
_MIN_RUN_BYTES = {"local": 4096, "remote": 1 << 20}


def _shape(entry: Any, where: str) -> tuple[int, ...]:
    if entry.shape.unknown_rank:
        raise CorruptCheckpointError(f"{where}: stored shape has unknown rank")
    dims = tuple(d.size for d in entry.shape.dim)
    if any(d < 0 for d in dims):
        raise CorruptCheckpointError(f"{where}: stored shape {list(dims)} has a negative dimension")
    return dims


def _stored(entry: Any, where: str, num_shards: int) -> StoredTensor:
    shape = _shape(entry, where)
    if not 0 <= entry.shard_id < num_shards or entry.offset < 0 or entry.size < 0:
        raise CorruptCheckpointError(
            f"{where}: entry points at shard {entry.shard_id} offset {entry.offset} size {entry.size}, "
            f"but the checkpoint has {num_shards} shard(s)")
    if entry.dtype != DT_STRING and is_supported(entry.dtype):
        expected = math.prod(shape) * stored_itemsize(entry.dtype)
        if entry.size != expected:
            raise CorruptCheckpointError(
                f"{where}: entry holds {entry.size} bytes, but shape {list(shape)} of "
                f"{numpy_dtype(entry.dtype).name} needs {expected}")
    return StoredTensor(entry.dtype, shape, entry.shard_id, entry.offset, entry.size, entry.crc32c)


def _shared_bytes(parts: list[StoredTensor]) -> str | None:
    """Why slices' byte ranges overlap (TensorFlow writes each slice's bytes once), or None.

    Checked before anything is allocated: slices that alias one range would make a small data file
    stand for as many times its size as there are slices.
    """
    spans = sorted((p.shard_id, p.offset, p.offset + p.size) for p in parts if p.size)
    for (shard, _, end), (next_shard, start, next_end) in zip(spans, spans[1:]):
        if shard == next_shard and start < end:
            return (f"two of its slices share bytes {start}..{min(end, next_end)} of data shard {shard} "
                    "(each slice is stored in bytes of its own)")
    return None


class V2Checkpoint(Checkpoint):
    """An open TensorFlow V2 checkpoint (tensor bundle). Use :func:`tf2flax.open_checkpoint` to make one.

    Example::

        ckpt = open_checkpoint("gs://bucket/run/")
        for name, shape in ckpt.list_variables(): ...
        x = ckpt.read("dense/kernel")
    """

    def __init__(self, store: Store, prefix: str, verify_checksums: bool = True, verify_regions: bool = False,
                 mmap: bool = True):
        self.store = store
        self.prefix = prefix
        self.path = store.describe(prefix)
        self.verify_checksums = verify_checksums
        self.verify_regions = verify_checksums and verify_regions
        # Local data files are mapped, and reads return views of them (see _mapped).
        self._view = getattr(store, "view", None) if mmap else None
        self.stats = ReadStats()
        self.opened = f"V2 checkpoint: {self.path}"
        self._min_run = _MIN_RUN_BYTES["local" if type(store).__name__ == "LocalStore" else "remote"]
        self._shard_sizes: dict[int, int | None] = {}
        self._probed: dict[int, int] = {}  # shard -> bytes known to exist in a file of unknown size
        self._object_graph: ObjectGraph | None | bool = False
        index_name = prefix + ".index"
        where = store.describe(index_name)
        try:
            size = store.size(index_name)  # known for local files; remote ones are read as they come
            if size is not None and size > _SNIFF_ABOVE and not ends_like_a_table(store, index_name):
                raise DecodeError("it does not end in a table footer")  # read no more of a large foreign file
            entries = parse_table(store.read(index_name), verify_checksums=True)
        except DecodeError as e:
            raise CorruptCheckpointError(f"{where}: not a valid checkpoint index: {e}") from None
        self._where = where
        self._entries, self._slice_entries = self._split(entries, where)
        self._infos: dict[str, TensorInfo] = {}
        self.names = sorted(self._entries)

    def _split(self, entries: list[tuple[bytes, bytes]], where: str) -> tuple[dict[str, bytes], dict[bytes, bytes]]:
        """Check the header; return ({tensor name: entry bytes}, {slice key: entry bytes}).

        Entries are decoded on first use (``info``), so opening a checkpoint of 100k tensors
        costs one pass over its index.
        """
        if not entries or entries[0][0] != b"":
            raise CorruptCheckpointError(f"{where}: the index has no header entry")
        header = decode(BundleHeaderProto, entries[0][1], where, "header")
        if entries[0][1][:1] == b"\x0a":
            raise CorruptCheckpointError(f"{where}: holds a V1 checkpoint table, not a V2 index; open the V1 file "
                                         "by its own name")
        version = header.version
        if version.producer < 0 or version.min_consumer > 1 or 1 in version.bad_consumers:
            raise UnsupportedFormatError(
                f"{where}: checkpoint version (producer {version.producer}, min consumer "
                f"{version.min_consumer}) needs a newer reader than format version 1")
        if header.endianness not in (0, 1):
            raise CorruptCheckpointError(f"{where}: unknown endianness {header.endianness}")
        if header.num_shards < 1:
            raise CorruptCheckpointError(f"{where}: header says {header.num_shards} data shards")
        self.num_shards = header.num_shards
        self.big_endian = header.endianness == 1
        slice_entries: dict[bytes, bytes] = {}
        named: dict[str, bytes] = {}
        for key, value in entries[1:]:
            if key[:1] == b"\x00":
                slice_entries[key] = value
                continue
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError:
                raise CorruptCheckpointError(f"{where}: tensor key {key[:60]!r} is not UTF-8") from None
            named[name] = value
        for key in slice_entries:
            try:
                decode_slice_key(key)
            except DecodeError:
                raise CorruptCheckpointError(f"{where}: malformed slice key {key[:60]!r}") from None
        return named, slice_entries

    def _decode_info(self, name: str) -> TensorInfo:
        here = f"{self._where}: tensor {name!r}"
        entry = decode(BundleEntryProto, self._entries[name], here, "entry")
        # Unreadable dtypes (DT_VARIANT, say) are listed; reading them raises.
        dtype = numpy_dtype(entry.dtype, here) if is_supported(entry.dtype) else np.dtype(object)
        if not entry.slices:
            stored = _stored(entry, here, self.num_shards)
            return TensorInfo(name, dtype, entry.dtype, stored.shape, stored)
        shape = _shape(entry, here)
        slices = []
        for proto in entry.slices:
            extents = tuple((e.start, e.length if e.HasField("length") else -1) for e in proto.extent)
            region = slice_region(extents, shape, here)
            value = self._slice_entries.get(encode_slice_key(name, extents))
            if value is None:
                raise CorruptCheckpointError(f"{here}: slice {extents} has no stored data entry")
            part = _stored(decode(BundleEntryProto, value, f"{here} slice {extents}", "entry"), f"{here} slice {extents}", self.num_shards)
            if part.shape != index_shape(region) or part.dtype_enum != entry.dtype:
                raise CorruptCheckpointError(
                    f"{here}: slice {extents} is stored with shape {list(part.shape)}, expected "
                    f"{list(index_shape(region))}")
            slices.append((region, part))
        problem = slices_problem(shape, [r for r, _ in slices]) or _shared_bytes([p for _, p in slices])
        if problem:
            raise CorruptCheckpointError(f"{here}: {problem}")
        return TensorInfo(name, dtype, entry.dtype, shape, None, tuple(slices))

    def release(self, name: str) -> None:
        """Let go of the resident pages of tensor ``name`` in the mapped data files (nothing is lost:
        views of it read them back from the page cache). A no-op where nothing is mapped.

        Example::

            params = copy_to_devices(ckpt.read("bert/embeddings/word_embeddings"))
            ckpt.release("bert/embeddings/word_embeddings")
        """
        release = getattr(self.store, "release", None)
        if release is None or self._view is None:
            return
        info = self._infos.get(name)
        if info is None:
            return
        for stored in [info.stored] if info.stored is not None else [s for _, s in info.slices]:
            release(self._data_file(stored.shard_id), stored.offset, stored.offset + stored.size)

    def list_variables(self) -> list[tuple[str, list[int]]]:
        """[(name, shape)] sorted by name, as ``tf.train.list_variables`` gives them."""
        out = []
        entry = BundleEntryProto()
        for n in self.names:
            info = self._infos.get(n)
            if info is not None:
                out.append((n, list(info.shape)))
                continue
            try:
                entry.ParseFromString(self._entries[n])
            except ProtoDecodeError:
                raise CorruptCheckpointError(f"{self._where}: {n!r}: entry does not decode as a BundleEntryProto") from None
            out.append((n, [d.size for d in entry.shape.dim]))
        return out

    @property
    def object_graph(self) -> ObjectGraph | None:
        """The TF2 object graph, or None for name-based (TF1) checkpoints."""
        if self._object_graph is False:
            graph = None
            if OBJECT_GRAPH_KEY in self._entries:
                try:
                    graph = ObjectGraph.parse(self.read(OBJECT_GRAPH_KEY).item())
                except ValueError as e:
                    raise CorruptCheckpointError(f"{self.path}: {OBJECT_GRAPH_KEY}: {e}") from None
            self._object_graph = graph
        return self._object_graph  # type: ignore[return-value]

    # ---- reading -------------------------------------------------------------------------
    def read(self, name: str, index: Any = None) -> np.ndarray:
        """Tensor ``name``, or the region ``index`` (ints, step-1 slices, ``...``) of it.

        Whole reads verify each stored tensor's CRC32C (unless ``verify_checksums=False``). A
        region read fetches only the bytes of the region, which no checksum covers, unless the
        checkpoint was opened with ``verify_regions=True``: then each stored tensor or slice the
        region touches is read whole and verified.

        From a local checkpoint (opened with ``mmap=True``, the default), little-endian tensors
        come back as read-only views of the mapped data file where their alignment allows: no
        copy is made. Call ``.copy()`` for an array you may write to; see
        docs/performance.md for files that change while they are open.
        """
        info = self.info(name)
        if not is_supported(info.dtype_enum):
            numpy_dtype(info.dtype_enum, f"{self.path}: tensor {name!r}")
        self._check_readable(info)
        region, squeeze = self._region(info, index)
        if info.dtype_enum == DT_STRING:
            out = self._read_strings(info, region)
        elif info.stored is not None:
            out = self._read_dense(info.stored, region, f"tensor {name!r}")
        else:
            out = self._read_sliced(info, region)
        return squeezed(out, squeeze)

    def read_rows(self, name: str, chunk_bytes: int = 2 << 20) -> Iterator[tuple[int, np.ndarray]]:
        """Tensor ``name`` whole, as ``(first row, block)`` pairs of consecutive rows (axis 0) of about
        ``chunk_bytes`` each: views of the mapped file, checksummed as they pass while they are in
        the CPU's cache, so a caller that copies them out touches each byte of the file once.

        The CRC32C mismatch of a corrupted tensor raises CorruptCheckpointError after the last
        block: a caller must discard what it copied when the loop raises. Where no view can serve
        (remote, ``mmap=False``, big-endian, misaligned, strings, sliced, scalars) the one block is
        the whole tensor, read and checked as :meth:`read` does.

        Example::

            out = np.empty(ckpt.shape("emb"), ckpt.dtype("emb"))
            for start, rows in ckpt.read_rows("emb"):
                out[start:start + len(rows)] = rows
        """
        info = self.info(name)
        stored, what = info.stored, f"tensor {name!r}"
        if (stored is None or self._view is None or self.big_endian or info.dtype_enum == DT_STRING
                or not is_supported(info.dtype_enum) or is_sub_byte(info.dtype_enum) or not stored.shape
                or stored.size == 0):
            yield 0, self.read(name)
            return
        file = self._check_extent(stored, what)
        try:
            view = self._view(file, stored.offset, stored.offset + stored.size)
        except CorruptCheckpointError as e:
            raise CorruptCheckpointError(f"{e} (reading {what})") from None
        array = np.frombuffer(view, numpy_dtype(stored.dtype_enum)).reshape(stored.shape)
        if not array.flags.aligned:
            yield 0, self.read(name)
            return
        row = stored.size // stored.shape[0]
        step = max(1, chunk_bytes // row)
        crc, began = 0, time.perf_counter()
        for start in range(0, stored.shape[0], step):
            if self.verify_checksums:
                crc = crc32c(view[start * row:(start + step) * row], crc)
            yield start, array[start:start + step]
        self.stats.add(stored.size, time.perf_counter() - began)
        if self.verify_checksums and mask_crc(crc) != stored.crc32c:
            raise CorruptCheckpointError(f"{self.store.describe(file)}: {what} fails its CRC32C check (data corrupted)")

    def _data_file(self, shard_id: int) -> str:
        return f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}"

    def _check_readable(self, info: TensorInfo) -> None:
        """Refuse, before allocating anything, a tensor numpy cannot hold or whose bytes lie past its files."""
        here = f"{self.path}: tensor {info.name!r}"
        check_fits_numpy(info, here)
        if info.dtype_enum == DT_STRING and math.prod(info.shape) > info.nbytes:
            raise CorruptCheckpointError(f"{here} of shape {list(info.shape)} is stored in {info.nbytes} bytes, "
                                         "less than one per string")
        parts = [info.stored] if info.stored is not None else [s for _, s in info.slices]
        ends: dict[int, int] = {}
        for stored in parts:
            self._check_extent(stored, f"tensor {info.name!r}")
            ends[stored.shard_id] = max(ends.get(stored.shard_id, 0), stored.offset + stored.size)
        if sum(s.size for s in parts) > _PROBE_ABOVE:  # a large claim on files of unknown size (URLs)
            for shard, end in ends.items():
                self._probe_end(shard, end, f"tensor {info.name!r}")

    def _probe_end(self, shard: int, end: int, what: str) -> None:
        """Where a data file's size is not known (a URL), read its byte ``end - 1`` before memory is
        allocated for bytes up to ``end``: a small index claiming terabytes fails here, in one request."""
        if self._shard_sizes.get(shard) is not None or end <= self._probed.get(shard, 0):
            return
        file = self._data_file(shard)
        try:
            self.store.read(file, end - 1, end)
        except CorruptCheckpointError as e:
            raise CorruptCheckpointError(f"{e} (reading {what})") from None
        self._probed[shard] = end

    def _check_extent(self, stored: StoredTensor, what: str) -> str:
        """The data file holding ``stored``; CorruptCheckpointError if its bytes lie past the file's end."""
        file = self._data_file(stored.shard_id)
        if stored.shard_id not in self._shard_sizes:
            self._shard_sizes[stored.shard_id] = self.store.size(file)
        size = self._shard_sizes[stored.shard_id]
        if size is not None and stored.offset + stored.size > size:
            raise CorruptCheckpointError(
                f"{self.store.describe(file)}: {what} needs bytes {stored.offset}..{stored.offset + stored.size}, "
                f"but the file has {size} bytes (truncated?)")
        return file

    def _fetch(self, stored: StoredTensor, start: int, out: memoryview, what: str) -> None:
        """Read ``len(out)`` bytes at ``start`` within a stored tensor, with bounds checks."""
        file = self._check_extent(stored, what)
        began = time.perf_counter()
        try:
            self.store.read_into(file, stored.offset + start, out)
        except CorruptCheckpointError as e:
            raise CorruptCheckpointError(f"{e} (reading {what})") from None
        self.stats.add(len(out), time.perf_counter() - began)

    def _decode(self, stored: StoredTensor, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        dtype = numpy_dtype(stored.dtype_enum)
        if is_sub_byte(stored.dtype_enum):
            return raw.view(np.int8 if dtype.name.startswith("int") else np.uint8).astype(dtype).reshape(shape)
        unit = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize  # complex: two floats
        if self.big_endian and unit > 1:
            raw = raw.view(f">u{unit}").astype(f"<u{unit}").view(np.uint8)
        return raw.view(dtype).reshape(shape)

    def _mapped(self, stored: StoredTensor, region: Index, whole: bool, what: str) -> np.ndarray | None:
        """``region`` of a stored tensor as a read-only view of its mapped data file, or None where
        a view cannot serve (remote store, ``mmap=False``, big-endian or sub-byte data, empty).

        Whole reads are verified over the mapping, on several cores for large tensors, so each
        byte is touched once. A tensor whose offset in the file does not suit its dtype's
        alignment is copied, whole or just the region asked for.
        """
        if (self._view is None or self.big_endian or is_sub_byte(stored.dtype_enum) or stored.size == 0):
            return None
        file = self._check_extent(stored, what)
        began = time.perf_counter()
        try:
            view = self._view(file, stored.offset, stored.offset + stored.size)
        except CorruptCheckpointError as e:
            raise CorruptCheckpointError(f"{e} (reading {what})") from None
        if whole and self.verify_checksums and mask_crc(crc32c_parallel(view)) != stored.crc32c:
            raise CorruptCheckpointError(
                f"{self.store.describe(file)}: {what} fails its CRC32C check (data corrupted)")
        dtype = numpy_dtype(stored.dtype_enum)
        array = np.frombuffer(view, dtype).reshape(stored.shape)
        if not whole:
            array = array[region]
        if not array.flags.aligned:
            array = array.copy()
        self.stats.add(array.nbytes, time.perf_counter() - began)
        return array

    def _read_dense(self, stored: StoredTensor, region: Index, what: str) -> np.ndarray:
        shape = stored.shape
        item = stored_itemsize(stored.dtype_enum)
        whole = normalize_index(None, shape)
        if self.verify_regions and region != whole:
            return np.ascontiguousarray(self._read_dense(stored, whole, what)[region])
        mapped = self._mapped(stored, region, region == whole, what)
        if mapped is not None:
            return mapped
        if region == whole:
            raw = np.empty(stored.size, np.uint8)
            if stored.size:
                self._fetch(stored, 0, memoryview(raw), what)
            if self.verify_checksums and mask_crc(crc32c_parallel(raw)) != stored.crc32c:
                raise CorruptCheckpointError(
                    f"{self.store.describe(self._data_file(stored.shard_id))}: {what} fails its CRC32C check "
                    "(data corrupted)")
            return self._decode(stored, raw, shape)
        out_shape = index_shape(region)
        if math.prod(out_shape) == 0:
            return np.empty(out_shape, numpy_dtype(stored.dtype_enum))
        # Dimensions after `k` are whole in the region, so each combination of the indices
        # before `k` is one contiguous run of bytes.
        k = len(shape)
        while k > 0 and region[k - 1] == slice(0, shape[k - 1]):
            k -= 1
        k = max(k - 1, 0)
        strides = [math.prod(shape[i + 1:]) * item for i in range(len(shape))]
        run = (region[k].stop - region[k].start) * strides[k]
        runs = math.prod(out_shape[:k])
        box = (region[0].stop - region[0].start) * strides[0]  # whole rows of the outermost dim
        if runs == 1:
            out = np.empty(run, np.uint8)
            self._fetch(stored, sum(s.start * st for s, st in zip(region, strides)), memoryview(out), what)
            return self._decode(stored, out, out_shape)
        if run < self._min_run or 2 * run * runs >= box:
            raw = np.empty(box, np.uint8)
            self._fetch(stored, region[0].start * strides[0], memoryview(raw), what)
            rows = self._decode(stored, raw, (region[0].stop - region[0].start, *shape[1:]))
            return np.ascontiguousarray(rows[(slice(None), *region[1:])])
        out = np.empty(run * runs, np.uint8)
        view = memoryview(out)
        starts = region[k].start * strides[k] + sum(
            np.ix_(*[np.arange(s.start, s.stop) * strides[i] for i, s in enumerate(region[:k])])).reshape(-1)
        for i, start in enumerate(starts):
            self._fetch(stored, int(start), view[i * run:(i + 1) * run], what)
        return self._decode(stored, out, out_shape)

    def _read_sliced(self, info: TensorInfo, region: Index) -> np.ndarray:
        out = np.empty(index_shape(region), info.dtype)
        if out.size == 0:
            return out
        for part_region, stored in info.slices:
            met = overlap(region, part_region)
            if met is None:
                continue
            local, dest = met
            what = f"tensor {info.name!r} slice {[(p.start, p.stop) for p in part_region]}"
            if info.dtype_enum == DT_STRING:
                out[dest] = self._strings(stored, what)[local]
            else:
                out[dest] = self._read_dense(stored, local, what)
        return out

    def _read_strings(self, info: TensorInfo, region: Index) -> np.ndarray:
        if info.stored is None:
            return self._read_sliced(info, region)
        return self._strings(info.stored, f"tensor {info.name!r}")[region + (Ellipsis,)]

    def _strings(self, stored: StoredTensor, what: str) -> np.ndarray:
        file = self.store.describe(self._data_file(stored.shard_id))
        raw = np.empty(stored.size, np.uint8)
        if stored.size:
            self._fetch(stored, 0, memoryview(raw), what)
        data = raw.tobytes()
        count = math.prod(stored.shape)
        lengths, pos = [], 0
        try:
            for _ in range(count):
                n, pos = read_varint(data, pos)
                lengths.append(n)
        except DecodeError:
            raise CorruptCheckpointError(f"{file}: {what}: string lengths are truncated or malformed") from None
        if pos + 4 + sum(lengths) != len(data):
            raise CorruptCheckpointError(
                f"{file}: {what}: string lengths add up to {pos + 4 + sum(lengths)} bytes, the entry has {len(data)}")
        if self.verify_checksums:
            # Big-endian writers checksum (and store) the lengths in big-endian byte order.
            order = ">" if self.big_endian else "<"
            crc = _length_crc(lengths, order)
            (stored_length_crc,) = struct.unpack_from(order + "I", data, pos)
            crc = crc32c(data[pos + 4:], crc32c(data[pos:pos + 4], crc))
            if mask_crc(_length_crc(lengths, order)) != stored_length_crc or mask_crc(crc) != stored.crc32c:
                raise CorruptCheckpointError(f"{file}: {what} fails its CRC32C check (data corrupted)")
        out = np.empty(count, dtype=object)
        pos += 4
        for i, n in enumerate(lengths):
            out[i] = data[pos:pos + n]
            pos += n
        return out.reshape(stored.shape)


def _length_crc(lengths: list[int], order: str = "<") -> int:
    """CRC32C of string lengths fed as uint32 (uint64 above 2**32-1) in byte ``order``."""
    crc = 0
    for n in lengths:
        crc = crc32c(struct.pack(order + ("I" if n <= 0xFFFFFFFF else "Q"), n), crc)
    return crc
