"""Reading V1 checkpoints (``SaverDef.V1``, TensorFlow's tensor-slice tables) without TensorFlow.

A V1 checkpoint is one table file, or several (``model-00000-of-00002``, ...). As in TensorFlow's
``TensorSliceReader``: each file's first entry (key ``""``) is a ``SavedTensorSlices`` whose ``meta``
lists the tensors that file holds (name, shape, dtype, the slices saved); each slice is one more
entry, keyed by the tensor name and slice extents, holding a ``SavedSlice`` whose ``TensorProto``
carries the values in a repeated field (``float_val``, ``int_val``, ``half_val``, ...). A tensor is
assembled from its slices across all files; a partitioned variable is saved as several slices.

Opening reads each file's footer, index block and first data block, nothing more: listing, shapes
and dtypes come from the ``meta`` entries. Reading a region decodes each slice it touches whole, as
the values lie inside protos (no byte range holds a sub-region): a tensor saved whole (most are) is
decoded whole for any region of it.

Example::

    ckpt = open_checkpoint("/zoo/resnet_v1_50.ckpt")       # a V1Checkpoint
    ckpt.list_variables()[:1]                              # [('global_step', [])]
    ckpt.read("resnet_v1_50/logits/biases")[:3]
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from ..errors import CorruptCheckpointError, UnsupportedFormatError
from ..regions import Index, index_shape, normalize_index, overlap
from ..storage import Store
from .coding import DecodeError
from .dtypes import DT_STRING, is_supported, numpy_dtype
from .locate import describe_v1
from .protos import SavedTensorSlices, decode
from .base import (Checkpoint, ReadStats, StoredTensor, TensorInfo, check_fits_numpy, shape_text, slice_region,
                   slices_problem, squeezed)
from .slice_key import encode_slice_key
from .table import FOOTER_SIZE, TableFile

# DataType enum -> the TensorProto field TensorFlow's V1 writer puts its values in
# (``saved_tensor_slice_util.h``): small integers go to int_val, half and bfloat16 to half_val as bits.
_FIELDS = {
    1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 5: "int_val", 6: "int_val", 7: "string_val",
    8: "scomplex_val", 9: "int64_val", 10: "bool_val", 11: "int_val", 12: "int_val", 13: "int_val",
    14: "half_val", 15: "int_val", 16: "int_val", 17: "int_val", 18: "dcomplex_val", 19: "half_val",
    22: "uint32_val", 23: "uint64_val",
}
_FIELD_DTYPES = {"float_val": np.float32, "double_val": np.float64, "int_val": np.int32, "int64_val": np.int64,
                 "bool_val": np.bool_, "scomplex_val": np.float32, "dcomplex_val": np.float64, "half_val": np.int32,
                 "uint32_val": np.uint32, "uint64_val": np.uint64}
# Each element takes at least one byte of a block, and snappy expands at most 32x: a slice declaring
# more elements than this cannot be stored in its block (checked before anything is allocated).
_MAX_ELEMENTS_PER_BYTE = 33


@dataclasses.dataclass
class _Tensor:
    """A tensor as the ``meta`` entries declare it: dtype, shape, and (extents, file, region) per saved slice."""

    dtype_enum: int
    shape: tuple[int, ...]
    slices: list[tuple[tuple[tuple[int, int], ...], int, Index]] = dataclasses.field(default_factory=list)
    seen: set[tuple[tuple[int, int], ...]] = dataclasses.field(default_factory=set)


class V1Checkpoint(Checkpoint):
    """An open V1 checkpoint, with :class:`Checkpoint`'s interface. Use ``open_checkpoint`` to make one.

    ``prefix`` is the checkpoint's name (a file, or ``name-?????-of-N``); ``files`` its table files in
    shard order; a tensor's ``shards`` are indices into ``files``. Each stored slice's ``offset`` is
    that of the table block holding it, its ``size`` the bytes it decodes to (strings: the block's size).

    Example::

        with open_checkpoint("/zoo/vgg_16.ckpt") as ckpt:
            ckpt.read("vgg_16/fc8/biases")
    """

    def __init__(self, store: Store, prefix: str, files: tuple[str, ...], verify_checksums: bool = True,
                 verify_regions: bool = False):
        self.store = store
        self.prefix = prefix
        self.files = tuple(files)
        self.path = describe_v1(store, prefix, self.files)
        self.opened = f"V1 checkpoint: {self.path}"
        self.verify_checksums = verify_checksums
        self.verify_regions = verify_checksums and verify_regions
        self.stats = ReadStats()
        self._view = None  # tensors lie inside protos: nothing is handed out as a view of the files
        self.num_shards = len(self.files)
        self.big_endian = False
        self._object_graph = None
        self._tables = [self._open_table(f) for f in self.files]
        self._tensors: dict[str, _Tensor] = {}
        for shard, table in enumerate(self._tables):
            self._register(shard, table)
        self._entries = self._tensors
        self._infos: dict[str, TensorInfo] = {}
        # (name, shard, region bounds) -> the slice's extents as saved (its key in the table)
        self._extents: dict[tuple[str, int, tuple], tuple[tuple[int, int], ...]] = {}
        self.names = sorted(self._tensors)

    def __repr__(self) -> str:
        return f"V1Checkpoint({self.path!r}, {len(self.names)} tensors)"

    # ---- opening -------------------------------------------------------------------------------
    def _read_range(self, file: str, start: int, stop: int) -> bytes:
        began = time.perf_counter()
        data = self.store.read(file, start, stop)
        self.stats.add(len(data), time.perf_counter() - began)
        return data

    def _open_table(self, file: str) -> TableFile:
        size = self.store.size(file)
        footer_at = -FOOTER_SIZE if size is None else max(0, size - FOOTER_SIZE)
        try:
            footer = self.store.read(file, footer_at, None if size is None else size)
            return TableFile(lambda a, b: self._read_range(file, a, b), footer, size, self.verify_checksums)
        except DecodeError as e:
            raise CorruptCheckpointError(f"{self.store.describe(file)}: not a valid V1 checkpoint file: {e}") from None

    def _register(self, shard: int, table: TableFile) -> None:
        """Add the tensors and slices file ``shard`` declares, checked as ``TensorSliceReader`` does."""
        where = self.store.describe(self.files[shard])
        try:
            first = table.block(0) if table.blocks else []
        except DecodeError as e:
            raise CorruptCheckpointError(f"{where}: {e}") from None
        if not first or first[0][0] != b"":
            raise CorruptCheckpointError(f"{where}: no saved tensor slices at the beginning of the checkpoint file")
        meta = decode(SavedTensorSlices, first[0][1], where, "its metadata entry").meta
        versions = meta.versions
        if versions.producer < 0 or versions.min_consumer > 1 or 1 in versions.bad_consumers:
            raise UnsupportedFormatError(
                f"{where}: checkpoint version (producer {versions.producer}, min consumer {versions.min_consumer}) "
                "needs a newer reader than V1 format version 1")
        for ssm in meta.tensor:
            here = f"{where}: tensor {ssm.name!r}"
            if ssm.shape.unknown_rank or any(d.size < 0 for d in ssm.shape.dim):
                shown = "of unknown rank" if ssm.shape.unknown_rank else shape_text([d.size for d in ssm.shape.dim])
                raise CorruptCheckpointError(f"{here}: shape {shown} is not a known, non-negative shape")
            shape = tuple(d.size for d in ssm.shape.dim)
            tensor = self._tensors.setdefault(ssm.name, _Tensor(ssm.type, shape))
            if tensor.shape != shape or tensor.dtype_enum != ssm.type:
                raise CorruptCheckpointError(
                    f"{here}: declared with shape {list(shape)} and DataType {ssm.type} here, but shape "
                    f"{list(tensor.shape)} and DataType {tensor.dtype_enum} in another file")
            for proto in ssm.slice:
                extents = tuple((e.start, e.length if e.HasField("length") else -1) for e in proto.extent)
                region = slice_region(extents, shape, here)  # in range, right rank
                if extents in tensor.seen:
                    raise CorruptCheckpointError(f"{here}: slice {list(extents)} is saved twice")
                tensor.seen.add(extents)
                tensor.slices.append((extents, shard, region))

    # ---- metadata ------------------------------------------------------------------------------
    def _decode_info(self, name: str) -> TensorInfo:
        here = f"{self.path}: tensor {name!r}"
        tensor = self._tensors[name]
        dtype = numpy_dtype(tensor.dtype_enum, here) if is_supported(tensor.dtype_enum) else np.dtype(object)
        parts = []
        for extents, shard, region in tensor.slices:
            shape = index_shape(region)
            table = self._tables[shard]
            block = table.block_of(encode_slice_key(name, extents))
            if block is None:
                raise CorruptCheckpointError(
                    f"{self.store.describe(self.files[shard])}: tensor {name!r} slice {list(extents)} has no entry")
            offset, size = table.blocks[block]
            if math.prod(shape) > _MAX_ELEMENTS_PER_BYTE * size + 64:
                raise CorruptCheckpointError(
                    f"{here}: slice {list(extents)} declares {math.prod(shape)} elements, more than its "
                    f"{size}-byte block can hold")
            nbytes = size if tensor.dtype_enum == DT_STRING or dtype == object else math.prod(shape) * dtype.itemsize
            parts.append((region, StoredTensor(tensor.dtype_enum, shape, shard, offset, nbytes, 0)))
            self._extents[(name, shard, _flat(region))] = extents
        problem = slices_problem(tensor.shape, [r for r, _ in parts])
        if problem is not None:
            raise CorruptCheckpointError(f"{here} of shape {list(tensor.shape)}: {problem}")
        if len(parts) == 1:
            return TensorInfo(name, dtype, tensor.dtype_enum, tensor.shape, parts[0][1])
        return TensorInfo(name, dtype, tensor.dtype_enum, tensor.shape, None, tuple(parts))

    def list_variables(self) -> list[tuple[str, list[int]]]:
        """[(name, shape)] sorted by name, as ``tf.train.list_variables`` gives them."""
        return [(n, list(self._tensors[n].shape)) for n in self.names]

    @property
    def object_graph(self) -> None:
        """V1 checkpoints have no object graph: names are TF1 variable names."""
        return None

    # ---- reading -------------------------------------------------------------------------------
    def read(self, name: str, index: Any = None) -> np.ndarray:
        """Tensor ``name``, or the region ``index`` (ints, step-1 slices, ``...``) of it.

        Each slice the region touches is read and decoded whole (its block's CRC32C checked unless
        ``verify_checksums=False``). Every table block holding one is parsed once per read, and
        every slice's entry is found and sized before the output is allocated.
        """
        info = self.info(name)
        here = f"{self.path}: tensor {name!r}"
        if info.dtype_enum not in _FIELDS:
            raise UnsupportedFormatError(f"{here}: DataType {info.dtype_enum} is not a type V1 checkpoints store")
        check_fits_numpy(info, here)
        region, squeeze = self._region(info, index)
        parts = info.slices or ((normalize_index(None, info.shape), info.stored),)
        if info.stored is not None:  # saved whole: the decoded slice is the tensor
            values = self._slice_values(info, parts[0][0], info.stored, self._entries_of(info, parts)[0])
            out = values if region == parts[0][0] else np.ascontiguousarray(values[region])
            return squeezed(out, squeeze)
        out_shape = index_shape(region)
        touched = [(r, s, overlap(region, r)) for r, s in parts] if math.prod(out_shape) else []
        touched = [(r, s, met) for r, s, met in touched if met is not None]
        entries = self._entries_of(info, [(r, s) for r, s, _ in touched])
        out = np.empty(out_shape, info.dtype)
        for (part_region, stored, (local, dest)), value in zip(touched, entries):
            out[dest] = self._slice_values(info, part_region, stored, value)[local]
        return squeezed(out, squeeze)

    def _entries_of(self, info: TensorInfo, parts: list[tuple[Index, StoredTensor]]) -> list[bytes]:
        """The table entry of each of ``parts`` (saved slices of ``info``), parsing each block once;
        CorruptCheckpointError if one is missing or too short for the elements its slice declares."""
        blocks: dict[tuple[int, int], dict[bytes, bytes]] = {}
        out = []
        for region, stored in parts:
            extents = self._extents[(info.name, stored.shard_id, _flat(region))]
            file = self.store.describe(self.files[stored.shard_id])
            key = encode_slice_key(info.name, extents)
            table = self._tables[stored.shard_id]
            number = table.block_of(key)
            if (stored.shard_id, number) not in blocks:
                try:
                    blocks[(stored.shard_id, number)] = dict(table.block(number)) if number is not None else {}
                except DecodeError as e:
                    raise CorruptCheckpointError(f"{file}: {e} (reading tensor {info.name!r})") from None
            value = blocks[(stored.shard_id, number)].get(key)
            what = f"{file}: tensor {info.name!r} slice {list(extents)}"
            if value is None:
                raise CorruptCheckpointError(f"{what}: the file has no entry for this slice")
            count = math.prod(stored.shape)
            if count > len(value):  # every value takes at least a byte of its entry
                raise CorruptCheckpointError(f"{what}: declares {count} elements, its {len(value)}-byte entry "
                                             "cannot hold them")
            out.append(value)
        return out

    def _slice_values(self, info: TensorInfo, region: Index, stored: StoredTensor, value: bytes) -> np.ndarray:
        """One saved slice of ``info`` from its entry ``value``, decoded whole, as TensorFlow's
        ``CopySliceData`` reads it."""
        extents = self._extents[(info.name, stored.shard_id, _flat(region))]
        file = self.store.describe(self.files[stored.shard_id])
        what = f"{file}: tensor {info.name!r} slice {list(extents)}"
        proto = decode(SavedTensorSlices, value, file, f"tensor {info.name!r} slice {list(extents)}").data.data
        return _values(proto, info.dtype_enum, info.dtype, stored.shape, what)


def _flat(region: Index) -> tuple[tuple[int, int], ...]:
    return tuple((s.start, s.stop) for s in region)


def _values(proto: Any, dtype_enum: int, dtype: np.dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
    """The values of a saved slice's TensorProto, as an array of ``shape`` and ``dtype``."""
    field_name = _FIELDS[dtype_enum]
    field = getattr(proto, field_name)
    count = math.prod(shape)
    expected = 2 * count if dtype.kind == "c" else count
    if len(field) != expected:
        raise CorruptCheckpointError(f"{what}: holds {len(field)} values in {field_name}, shape {list(shape)} "
                                     f"needs {expected}")
    if dtype_enum == DT_STRING:
        out = np.empty(count, dtype=object)
        out[:] = list(field)
        return out.reshape(shape)
    raw = np.array(field, dtype=_FIELD_DTYPES[field_name])
    if field_name == "half_val":  # the 16 bits of each half/bfloat16, as an int32
        return raw.astype(np.uint16).view(dtype).reshape(shape)
    if dtype.kind == "c":
        return raw.view(dtype).reshape(shape)
    return raw.astype(dtype, copy=False).reshape(shape)

