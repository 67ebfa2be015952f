"""What every checkpoint format offers: listing, tensor metadata, region reads, lazy slices.

Each format (``v2.py``, ``v1.py``, ...) subclasses :class:`Checkpoint`, fills ``names`` and
``_entries`` (name -> whatever the format needs to decode that tensor's metadata) when it opens, and
implements ``_decode_info``, ``list_variables`` and ``read``. A new format goes in a module of its
own beside them, and ``open.py`` learns to open it.

Example::

    with tf2flax.open_checkpoint("/runs/bert") as ckpt:       # any format
        info = ckpt.info("bert/pooler/dense/kernel")        # TensorInfo: dtype, shape, stored bytes
        rows = ckpt.get_slice("bert/pooler/dense/kernel")[:4]
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import threading
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..errors import CorruptCheckpointError, RegionError, TensorNotFoundError, UnsupportedFormatError
from ..regions import Index, expand_index, normalize_index
from ..storage import Store
from .object_graph import ObjectGraph


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """Where one dense tensor's bytes lie: shard, byte range, checksum."""

    dtype_enum: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """A variable as the checkpoint lists it: name, dtype, full shape, and where its bytes are.

    Dense tensors have ``stored``; sliced (partitioned) ones have ``slices``: for each stored
    slice, its region of the full tensor and its stored bytes.
    """

    name: str
    dtype: np.dtype
    dtype_enum: int
    shape: tuple[int, ...]
    stored: StoredTensor | None
    slices: tuple[tuple[Index, StoredTensor], ...] = ()

    @property
    def nbytes(self) -> int:
        """Bytes on disk (for strings: all lengths, checksum and characters)."""
        if self.stored is not None:
            return self.stored.size
        return sum(s.size for _, s in self.slices)

    @property
    def shards(self) -> tuple[int, ...]:
        """The data-file shards holding this tensor's bytes."""
        stored = [self.stored] if self.stored is not None else [s for _, s in self.slices]
        return tuple(sorted({s.shard_id for s in stored}))

    @property
    def is_sliced(self) -> bool:
        return self.stored is None


@dataclasses.dataclass
class ReadStats:
    """Counters of what a checkpoint has read from storage (thread-safe)."""

    bytes_read: int = 0
    reads: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def add(self, nbytes: int, seconds: float) -> None:
        with self._lock:
            self.bytes_read += nbytes
            self.reads += 1
            self.seconds += seconds


# numpy's limits on an array: dimensions (NPY_MAXDIMS: 64 since numpy 2, 32 before) and bytes.
MAX_RANK = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32
MAX_BYTES = int(np.iinfo(np.intp).max)


def check_fits_numpy(info: TensorInfo, here: str) -> None:
    """UnsupportedFormatError, before anything is allocated, if tensor ``info`` cannot be a numpy
    array: more dimensions than numpy has, or more bytes than an index can count (``[0, 2**62]``
    included: numpy refuses its shape although it holds nothing)."""
    if len(info.shape) > MAX_RANK:
        raise UnsupportedFormatError(f"{here} has rank {len(info.shape)}; numpy arrays have at most {MAX_RANK} "
                                     "dimensions")
    if math.prod(d for d in info.shape if d) * max(info.dtype.itemsize, 1) > MAX_BYTES:
        raise UnsupportedFormatError(f"{here} of shape {shape_text(info.shape)} is too large for a numpy "
                                     "array (its byte size overflows 64 bits)")


def shape_text(dims: Sequence[int], limit: int = 16) -> str:
    """``dims`` as a list for a message, its first ``limit`` dimensions at most.

    Example::

        shape_text([1] * 100, limit=3)   # '[1, 1, 1, ...] (100 dimensions)'
    """
    dims = list(dims)
    if len(dims) <= limit:
        return str(dims)
    return f"[{', '.join(map(str, dims[:limit]))}, ...] ({len(dims)} dimensions)"


def slice_region(extents: Sequence[tuple[int, int]], shape: tuple[int, ...], where: str) -> Index:
    """``extents`` ((start, length), length -1 for the rest of the axis) as a box of ``shape``;
    CorruptCheckpointError if they do not fit."""
    if len(extents) != len(shape):
        raise CorruptCheckpointError(f"{where}: slice has rank {len(extents)}, tensor has rank {len(shape)}")
    region = []
    for (start, length), dim in zip(extents, shape):
        stop = dim if length == -1 else start + length
        if start < 0 or length < -1 or stop > dim:
            raise CorruptCheckpointError(f"{where}: slice ({start}, {length}) is outside a dimension of size {dim}")
        region.append(slice(start, stop))
    return tuple(region)


def slices_problem(shape: tuple[int, ...], regions: list[Index]) -> str | None:
    """Why ``regions`` do not tile ``shape`` exactly (a gap or an overlap, as TensorFlow refuses), or None.

    Disjoint boxes whose volumes add up to the tensor's cover it. Overlaps are looked for with a
    sweep along the axis with the most distinct starts, so the work grows with the pairs of slices
    that share a range on that axis (none for the usual one-axis partitioning), not with a grid.
    """
    if math.prod(shape) == 0:
        return None
    boxes = [r for r in regions if all(s.stop > s.start for s in r)]
    if sum(math.prod(s.stop - s.start for s in r) for r in boxes) != math.prod(shape):
        return "its slices do not cover the whole tensor (does not have sufficient slices)"
    if not shape:  # a scalar: exactly one slice, as the volumes add up
        return None
    starts = np.array([[s.start for s in r] for r in boxes], dtype=np.int64).reshape(len(boxes), len(shape))
    stops = np.array([[s.stop for s in r] for r in boxes], dtype=np.int64).reshape(len(boxes), len(shape))
    axis = max(range(len(shape)), key=lambda i: len(set(starts[:, i].tolist())), default=0)
    order = np.argsort(starts[:, axis], kind="stable")
    starts, stops = starts[order], stops[order]
    # Boxes after i that start before box i ends on `axis`: i's only candidates for an overlap.
    ends = np.searchsorted(starts[:, axis], stops[:, axis], side="left")
    for i in np.nonzero(ends > np.arange(len(boxes)) + 1)[0]:
        later = slice(i + 1, ends[i])
        if np.any(np.all((starts[later] < stops[i]) & (starts[i] < stops[later]), axis=1)):
            return "its slices overlap (TensorFlow refuses overlapping slices)"
    return None


class Checkpoint:
    """An open checkpoint of any format. Use :func:`tf2flax.open_checkpoint` to make one.

    ``path`` names it in messages, ``opened`` says what was opened, ``stats`` counts what was read.

    Example::

        ckpt = open_checkpoint("gs://bucket/run/")
        for name, shape in ckpt.list_variables(): ...
        x = ckpt.read("dense/kernel")
    """

    store: Store
    path: str
    opened: str
    names: list[str]
    stats: ReadStats
    _entries: Mapping[str, Any]
    _infos: dict[str, TensorInfo]

    def _decode_info(self, name: str) -> TensorInfo:
        """The metadata of tensor ``name`` (known to be in ``_entries``), checked."""
        raise NotImplementedError

    def list_variables(self) -> list[tuple[str, list[int]]]:
        """[(name, shape)] sorted by name, as ``tf.train.list_variables`` gives them."""
        raise NotImplementedError

    def read(self, name: str, index: Any = None) -> np.ndarray:
        """Tensor ``name``, or the region ``index`` (ints, step-1 slices, ``...``) of it."""
        raise NotImplementedError

    @property
    def object_graph(self) -> ObjectGraph | None:
        """The TF2 object graph, or None where the checkpoint has none."""
        return None

    def release(self, name: str) -> None:
        """Let go of cached pages of tensor ``name``; a no-op unless the format maps its files."""

    # ---- listing -------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, {len(self.names)} tensors)"

    def close(self) -> None:
        """Release the open data files (local checkpoints keep one descriptor per shard)."""
        close = getattr(self.store, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def info(self, name: str) -> TensorInfo:
        """Metadata of tensor ``name``; TensorNotFoundError (with close names) if absent."""
        info = self._infos.get(name)
        if info is None:
            if name not in self._entries:
                close = difflib.get_close_matches(name, self.names, n=3, cutoff=0.6)
                hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise TensorNotFoundError(f"{self.path}: no tensor named {name!r}{hint}")
            info = self._infos[name] = self._decode_info(name)
        return info

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def dtype(self, name: str) -> np.dtype:
        return self.info(name).dtype

    def get_slice(self, name: str) -> TensorSlice:
        """A lazy view of tensor ``name``: indexing it reads only the region asked for.

        Example::

            emb = ckpt.get_slice("bert/embeddings/word_embeddings")
            emb.shape, emb.dtype          # from the index, nothing read
            rows = emb[1000:2000]         # reads those rows' bytes only
        """
        self.info(name)
        return TensorSlice(self, name)

    def _region(self, info: TensorInfo, index: Any) -> tuple[Index, set[int]]:
        """``index`` as a box of tensor ``info``, and the axes that integers select (dropped from the result)."""
        try:
            index = expand_index(index, len(info.shape))
            region = normalize_index(index, info.shape)
        except RegionError as e:
            raise RegionError(f"{self.path}: tensor {info.name!r} of shape {list(info.shape)}: {e}") from None
        return region, {i for i, s in enumerate(index) if isinstance(s, (int, np.integer))}


@dataclasses.dataclass(frozen=True)
class TensorSlice:
    """One tensor of a checkpoint, read on indexing (``view[2:5, ...]``) or whole (``view[...]``)."""

    checkpoint: Checkpoint
    name: str

    @property
    def shape(self) -> tuple[int, ...]:
        return self.checkpoint.shape(self.name)

    @property
    def dtype(self) -> np.dtype:
        return self.checkpoint.dtype(self.name)

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.checkpoint.read(self.name, index)

    def __repr__(self) -> str:
        return f"TensorSlice({self.name!r}, shape={list(self.shape)}, dtype={self.dtype.name})"


def squeezed(array: np.ndarray, axes: set[int]) -> np.ndarray:
    """``array`` without the (size-1) ``axes`` that integer indices selected."""
    return array.reshape([d for i, d in enumerate(array.shape) if i not in axes]) if axes else array


