"""A validated load plan: each target leaf <- a lazy source tensor + a chain of transforms.

The mapping engine builds a :class:`Plan`; ``materialize`` reads it. Sources and transforms map
*regions*: given the region of the target a device holds, :meth:`PlanEntry.read` works out the
region of the checkpoint tensor it needs and reads only that. Transforms that cannot map a region
(reshape, arbitrary callables) make the entry read its whole source once.

Example::

    entry = PlanEntry("params/Dense_0/kernel", TensorSource(ckpt, "dense/kernel"),
                      (Transpose((1, 0)), Cast(np.dtype("bfloat16"))))
    block = entry.read((slice(0, 4), slice(0, 8)))   # reads only the rows/cols it needs
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from .errors import MappingError, spoken
from .regions import Index, index_shape, normalize_index

MAX_RANK = 64  # numpy's most dimensions (NPY_MAXDIMS)

class Source(Protocol):
    """A lazy tensor: its shape and dtype are known without reading; ``read`` reads a region."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def read(self, index: Index) -> np.ndarray: ...

    def describe(self) -> str: ...


class Reader(Protocol):
    """What a source needs from a checkpoint (``tf2flax.Checkpoint`` is one)."""

    def shape(self, name: str) -> tuple[int, ...]: ...

    def dtype(self, name: str) -> np.dtype: ...

    def read(self, name: str, index: Any = None) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class TensorSource:
    """One tensor of a checkpoint, by its key."""

    reader: Reader = dataclasses.field(repr=False, compare=False)
    name: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.reader.shape(self.name))

    @property
    def dtype(self) -> np.dtype:
        return self.reader.dtype(self.name)

    def read(self, index: Index) -> np.ndarray:
        return self.reader.read(self.name, index)

    def describe(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True)
class RegionSource:
    """A rectangular region of another source (one part of a partitioned target)."""

    base: Source
    region: Index

    @property
    def shape(self) -> tuple[int, ...]:
        return index_shape(self.region)

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    def read(self, index: Index) -> np.ndarray:
        shifted = tuple(slice(r.start + s.start, r.start + s.stop) for r, s in zip(self.region, index))
        return self.base.read(shifted)

    def describe(self) -> str:
        spans = ",".join(f"{s.start}:{s.stop}" for s in self.region)
        return f"{self.base.describe()}[{spans}]"


@dataclasses.dataclass(frozen=True)
class ConcatSource:
    """Several sources joined along ``axis`` (checkpoint-side ``<var>/part_<n>`` tensors)."""

    parts: tuple[Source, ...]
    axis: int

    def __post_init__(self) -> None:
        if not self.parts:
            raise MappingError("a concatenation needs at least one part")
        first = self.parts[0].shape
        for p in self.parts[1:]:
            same = all(a == b for i, (a, b) in enumerate(zip(first, p.shape)) if i != self.axis)
            if len(p.shape) != len(first) or not same:
                raise MappingError(
                    f"cannot concatenate {p.describe()} {list(p.shape)} with "
                    f"{self.parts[0].describe()} {list(first)} along axis {self.axis}"
                )

    @property
    def shape(self) -> tuple[int, ...]:
        shape = list(self.parts[0].shape)
        shape[self.axis] = sum(p.shape[self.axis] for p in self.parts)
        return tuple(shape)

    @property
    def dtype(self) -> np.dtype:
        return self.parts[0].dtype

    def read(self, index: Index) -> np.ndarray:
        want = index[self.axis]
        pieces, offset = [], 0
        for p in self.parts:
            n = p.shape[self.axis]
            lo, hi = max(want.start, offset), min(want.stop, offset + n)
            if lo < hi or (not pieces and n == 0):
                sub = list(index)
                sub[self.axis] = slice(lo - offset, max(lo, hi) - offset)
                pieces.append(p.read(tuple(sub)))
            offset += n
        if not pieces:
            return np.empty(index_shape(index), self.dtype)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=self.axis)

    def describe(self) -> str:
        return f"concat[axis={self.axis}]({', '.join(p.describe() for p in self.parts)})"


@dataclasses.dataclass(frozen=True)
class StackSource:
    """Per-layer sources stacked along a new ``axis`` (``{i}`` in an assignment map key).

    A region maps to per-layer sub-regions: reading layers ``a..b-1`` reads only those layers, and
    only the part of each that the region covers.
    """

    layers: tuple[Source, ...]
    axis: int

    def __post_init__(self) -> None:
        if not self.layers:
            raise MappingError("a stack needs at least one layer")
        first = self.layers[0]
        for i, layer in enumerate(self.layers[1:], 1):
            if tuple(layer.shape) != tuple(first.shape) or np.dtype(layer.dtype) != np.dtype(first.dtype):
                raise MappingError(
                    f"cannot stack layer {i} ({layer.describe()}: {list(layer.shape)} "
                    f"{np.dtype(layer.dtype).name}) with layer 0 ({first.describe()}: {list(first.shape)} "
                    f"{np.dtype(first.dtype).name}): every layer must have the same shape and dtype")
        if not 0 <= self.axis <= len(first.shape):
            raise MappingError(f"stack axis {self.axis} is out of range for layers of shape {list(first.shape)}")

    @property
    def shape(self) -> tuple[int, ...]:
        shape = list(self.layers[0].shape)
        shape.insert(self.axis, len(self.layers))
        return tuple(shape)

    @property
    def dtype(self) -> np.dtype:
        return self.layers[0].dtype

    def read(self, index: Index) -> np.ndarray:
        want = index[self.axis]
        sub = index[: self.axis] + index[self.axis + 1:]
        blocks = [self.layers[i].read(sub) for i in range(want.start, want.stop)]
        if not blocks:
            return np.empty(index_shape(index), self.dtype)
        return np.stack(blocks, axis=self.axis)

    def describe(self) -> str:
        last = f" .. {self.layers[-1].describe()}" if len(self.layers) > 1 else ""
        return f"stack[axis={self.axis}]({self.layers[0].describe()}{last})"


def release_source(source: object) -> None:
    """Let go of the mapped pages of the checkpoint tensors ``source`` reads (``Checkpoint.release``),
    once their values have been copied or written out; follows ``base``/``parts``/``layers``/``entry`` fields."""
    reader, name = getattr(source, "reader", None), getattr(source, "name", None)
    if reader is not None and isinstance(name, str):
        release = getattr(reader, "release", None)
        if release is not None:
            release(name)
        return
    children = [getattr(source, "base", None), getattr(getattr(source, "entry", None), "source", None),
                *getattr(source, "parts", ()), *getattr(source, "layers", ())]
    for child in children:
        if child is not None:
            release_source(child)


class Transform(Protocol):
    """A step from a source array to a target array."""

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]: ...

    def out_dtype(self, dtype: np.dtype) -> np.dtype: ...

    def apply(self, array: np.ndarray) -> np.ndarray: ...

    region_aware: bool

    def source_index(self, index: Index) -> Index | None:
        """The input region that produces output region ``index``; None if not region-aware."""


@dataclasses.dataclass(frozen=True)
class Transpose:
    """``np.transpose(x, perm)``; region-aware."""

    region_aware = True

    perm: tuple[int, ...]

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if sorted(self.perm) != list(range(len(shape))):
            raise MappingError(f"transpose {list(self.perm)} does not fit a tensor of shape {list(shape)}")
        return tuple(shape[p] for p in self.perm)

    def out_dtype(self, dtype: np.dtype) -> np.dtype:
        return dtype

    def apply(self, array: np.ndarray) -> np.ndarray:
        return np.transpose(array, self.perm)

    def source_index(self, index: Index) -> Index:
        src: list[slice] = [slice(0, 0)] * len(self.perm)
        for out_axis, in_axis in enumerate(self.perm):
            src[in_axis] = index[out_axis]
        return tuple(src)


@dataclasses.dataclass(frozen=True)
class Reshape:
    """``x.reshape(shape)``; region-aware where it splits or merges adjacent axes of ``in_shape``.

    The axes of ``in_shape`` and ``shape`` fall into groups of equal size (:func:`axis_groups`). A
    region maps to one source box when, in each group, it selects a contiguous run of the group's
    flattened elements that is a box on the other side (for a split or merge: only the outermost
    partially selected axis may be partial, the axes outside it select one index, those inside are
    whole). Other regions, and every region when ``in_shape`` is unknown, read the whole source.
    """

    shape: tuple[int, ...]
    in_shape: tuple[int, ...] | None = None

    @property
    def region_aware(self) -> bool:
        return self.in_shape is not None and axis_groups(self.in_shape, self.out_shape(self.in_shape)) is not None

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(self.shape) > MAX_RANK:
            raise MappingError(f"cannot reshape {list(shape)} into {len(self.shape)} dimensions: numpy arrays "
                               f"have at most {MAX_RANK}")
        try:
            return _reshape_shape(shape, self.shape)
        except ValueError:
            raise MappingError(f"cannot reshape {list(shape)} into {list(self.shape)}") from None

    def out_dtype(self, dtype: np.dtype) -> np.dtype:
        return dtype

    def apply(self, array: np.ndarray) -> np.ndarray:
        return array.reshape(self.shape)

    def apply_region(self, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """A source block (from :meth:`source_index`) as the target block of ``shape``."""
        return array.reshape(shape)

    def source_index(self, index: Index) -> Index | None:
        if self.in_shape is None:
            return None
        out = self.out_shape(self.in_shape)
        groups = axis_groups(self.in_shape, out)
        if groups is None:
            return None
        src: list[slice] = []
        for ins, outs in groups:
            box = _map_group([index[a] for a in outs], [out[a] for a in outs], [self.in_shape[a] for a in ins])
            if box is None:
                return None
            src += box
        return tuple(src)


def axis_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[range, range]] | None:
    """Consecutive axes of shapes ``a`` and ``b`` paired into groups of equal size, smallest first.

    ``[6, 4] -> [2, 3, 4]`` gives ``[(range(0, 1), range(0, 2)), (range(1, 2), range(2, 3))]``.
    None when the sizes differ or a dimension is 0.
    """
    if 0 in a or 0 in b or int(np.prod(a, dtype=np.int64)) != int(np.prod(b, dtype=np.int64)):
        return None
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        i0, j0 = i, j
        pa = pb = 1
        if i < len(a):
            pa, i = pa * a[i], i + 1
        if j < len(b):
            pb, j = pb * b[j], j + 1
        while pa != pb:
            if pa < pb:
                if i == len(a):
                    return None
                pa, i = pa * a[i], i + 1
            else:
                if j == len(b):
                    return None
                pb, j = pb * b[j], j + 1
        groups.append((range(i0, i), range(j0, j)))
    return groups


def _map_group(region: list[slice], dims: list[int], to: list[int]) -> list[slice] | None:
    """The box over axes ``to`` holding the same elements as box ``region`` over axes ``dims`` (both
    flattened in row-major order), or None if they are not one box."""
    flat = _flat_range(region, dims)
    return None if flat is None else _box_of_range(flat[0], flat[1], to)


def _flat_range(region: list[slice], dims: list[int]) -> tuple[int, int] | None:
    """``[start, stop)`` in row-major order if box ``region`` is contiguous there, else None: the axes
    outside its outermost non-single axis select one index, the axes inside it are whole."""
    lengths = [s.stop - s.start for s in region]
    if 0 in lengths:
        return 0, 0
    j = next((a for a, n in enumerate(lengths) if n != 1), len(lengths) - 1)
    if any(lengths[a] != dims[a] for a in range(j + 1, len(dims))):
        return None
    start = 0
    for s, d in zip(region, dims):
        start = start * d + s.start
    return start, start + int(np.prod(lengths, dtype=np.int64))


def _box_of_range(start: int, stop: int, dims: list[int]) -> list[slice] | None:
    """The box over ``dims`` whose row-major elements are exactly ``[start, stop)``, or None."""
    if not dims:
        return []
    if stop <= start:
        return [slice(0, 0)] * len(dims)
    rest = int(np.prod(dims[1:], dtype=np.int64))
    if start % rest == 0 and stop % rest == 0:
        return [slice(start // rest, stop // rest)] + [slice(0, d) for d in dims[1:]]
    if start // rest == (stop - 1) // rest:
        inner = _box_of_range(start % rest, (stop - 1) % rest + 1, dims[1:])
        return None if inner is None else [slice(start // rest, start // rest + 1)] + inner
    return None


def _reshape_shape(shape: tuple[int, ...], new: tuple[int, ...]) -> tuple[int, ...]:
    size = math.prod(shape)
    new = tuple(int(d) for d in new)
    if new.count(-1) > 1:
        raise ValueError
    if -1 in new:
        rest = math.prod(d for d in new if d != -1)
        if rest == 0 or size % rest:
            raise ValueError
        new = tuple(size // rest if d == -1 else d for d in new)
    if math.prod(new) != size:
        raise ValueError
    return new


def is_value_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` holds one number, bool or string per element (numpy's, or ml_dtypes' such as bfloat16).

    Records (``'f4,f4'``), sub-arrays (``'(1000,1000)f4'``), dates (``'M8'``), raw void
    (``'V2000000000'``) and sized strings (``'S100'``) are not: a cast to one would multiply the
    memory of every element, or fail inside numpy.
    """
    dtype = np.dtype(dtype)
    return (dtype.fields is None and dtype.subdtype is None and dtype.kind not in "Mm"
            and dtype.type is not np.void and not (dtype.kind in "SU" and dtype.itemsize))


def can_cast(src: np.dtype, dst: np.dtype) -> bool:
    """Whether values of ``src`` have a meaningful conversion to ``dst`` (not string->number, complex->real)."""
    src, dst = np.dtype(src), np.dtype(dst)
    if src.kind in "OSU" or dst.kind in "OSU":
        return src.kind in "OSU" and dst.kind in "OSU"
    if src.kind == "c" and dst.kind != "c":
        return False
    return True


@dataclasses.dataclass(frozen=True)
class Cast:
    """``x.astype(dtype)``; region-aware. Refuses string<->number and complex->real."""

    region_aware = True

    dtype: np.dtype

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def out_dtype(self, dtype: np.dtype) -> np.dtype:
        if not is_value_dtype(self.dtype):
            raise MappingError(f"cannot cast to {str(self.dtype)!r}: not a dtype of single numbers or strings "
                               "(records, sub-arrays, dates, raw void and sized strings are refused)")
        if not can_cast(dtype, self.dtype):
            raise MappingError(f"cannot cast {np.dtype(dtype).name} to {np.dtype(self.dtype).name}")
        return np.dtype(self.dtype)

    def apply(self, array: np.ndarray) -> np.ndarray:
        return array if array.dtype == self.dtype else array.astype(self.dtype)

    def source_index(self, index: Index) -> Index:
        return index


@dataclasses.dataclass(frozen=True)
class Fn:
    """An arbitrary function of the whole array; reads the whole source (not region-aware).

    ``shape_fn``/``dtype_fn`` tell the plan the result's shape and dtype without reading data;
    without them the function is assumed to keep shape and dtype.
    """

    region_aware = False

    fn: Callable[[np.ndarray], np.ndarray]
    shape_fn: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None
    dtype_fn: Callable[[np.dtype], np.dtype] | None = None
    name: str = ""

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(self.shape_fn(shape)) if self.shape_fn else shape

    def out_dtype(self, dtype: np.dtype) -> np.dtype:
        return np.dtype(self.dtype_fn(dtype)) if self.dtype_fn else dtype

    def apply(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(self.fn(array))

    def source_index(self, index: Index) -> None:
        return None


@dataclasses.dataclass(frozen=True)
class PlanEntry:
    """One target leaf: where its value comes from and how it is transformed."""

    target: str
    source: Source
    transforms: tuple[Transform, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        shape = tuple(self.source.shape)
        for t in self.transforms:
            shape = t.out_shape(shape)
        return shape

    @property
    def dtype(self) -> np.dtype:
        dtype = np.dtype(self.source.dtype)
        for t in self.transforms:
            dtype = t.out_dtype(dtype)
        return dtype

    @property
    def region_aware(self) -> bool:
        """True when every transform maps regions, so a device's block reads only its bytes."""
        return all(t.region_aware for t in self.transforms)

    def read(self, index: Sequence[slice] | None = None, contiguous: bool = True) -> np.ndarray:
        """The target region ``index`` (whole target if None), reading as little as it can.

        ``contiguous=False`` may return a strided view (of a mapped file, say) instead of a C-order copy.
        """
        index = normalize_index(index, self.shape)
        chain = self._source_indices(index)
        if chain is None:
            array = self.source.read(normalize_index(None, self.source.shape))
            for t in self.transforms:
                array = t.apply(array)
            return _contiguous(array[index])
        array = self.source.read(chain[0])
        for t, out in zip(self.transforms, chain[1:]):
            array = t.apply_region(array, index_shape(out)) if hasattr(t, "apply_region") else t.apply(array)
        return _contiguous(array) if contiguous else array

    def reads_regions(self, regions: Sequence[Index]) -> bool:
        """True when every region in ``regions`` maps to one box of the source (else the source is
        read whole, once).

        Example::

            entry.reads_regions([(slice(0, 4), slice(0, 8))])
        """
        return all(self._source_indices(normalize_index(r, self.shape)) is not None for r in regions)

    def _source_indices(self, index: Index) -> list[Index] | None:
        """The region of the source, then the output region of each transform; None if one cannot map."""
        chain = [index]
        for t in reversed(self.transforms):
            src = t.source_index(chain[0])
            if src is None:
                return None
            chain.insert(0, src)
        return chain

    def describe(self) -> str:
        steps = "".join(f" -> {_describe_transform(t)}" for t in self.transforms)
        return f"{self.target} <- {self.source.describe()}{steps}"


def _contiguous(array: np.ndarray) -> np.ndarray:
    """``array`` in C order, keeping its rank (``np.ascontiguousarray`` makes 0-d arrays 1-d)."""
    return array if array.flags.c_contiguous else array.copy(order="C")


def _describe_transform(t: Transform) -> str:
    if isinstance(t, Transpose):
        return f"transpose{list(t.perm)}"
    if isinstance(t, Reshape):
        return f"reshape{list(t.shape)}"
    if isinstance(t, Cast):
        return f"cast({np.dtype(t.dtype).name})"
    if isinstance(t, Fn):
        return f"fn({t.name or getattr(t.fn, '__name__', 'callable')})"
    return type(t).__name__


@dataclasses.dataclass
class Report:
    """What a plan matched: both sides' leftovers, in the spirit of big_vision's merge_params.

    ``matched``: target path -> description of its source; ``unused``: checkpoint tensors no target
    reads; ``unset``: target leaves that keep their initial values.
    """

    matched: dict[str, str] = dataclasses.field(default_factory=dict)
    unused: list[str] = dataclasses.field(default_factory=list)
    unset: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        """Every match as ``target <- source -> transform ...``, in target order."""
        return [f"{target} <- {source}" for target, source in self.matched.items()]

    def summary(self, max_matched: int = 20) -> str:
        """Counts, then the first ``max_matched`` matches (all with ``None``), unused and unset names."""
        lines = [f"matched {len(self.matched)} target(s), {len(self.unused)} checkpoint tensor(s) unused, "
                 f"{len(self.unset)} target(s) unset"]
        shown = self.lines()[:max_matched] if max_matched is not None else self.lines()
        lines += [f"  {line}" for line in shown]
        if len(shown) < len(self.matched):
            lines.append(f"  ... and {len(self.matched) - len(shown)} more match(es) "
                         f"({spoken('report.lines() has all', 'all listed above')})")
        lines += [f"  unused: {n}" for n in self.unused]
        lines += [f"  unset:  {n}" for n in self.unset]
        return "\n".join(lines)


@dataclasses.dataclass
class Plan:
    """All entries (by target path), validated, plus the report."""

    entries: dict[str, PlanEntry]
    report: Report

    def describe(self) -> str:
        return "\n".join(e.describe() for e in self.entries.values())
