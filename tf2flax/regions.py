"""Regions of a tensor: numpy-style indices (ints, step-1 slices, one ``...``) as boxes.

Both the reader (region reads) and the load plan (device regions) speak in these boxes.

Example::

    normalize_index((..., 1), (4, 3))     # (slice(0, 4), slice(1, 2))
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import RegionError

Index = tuple[slice, ...]


def expand_index(index: Any, rank: int) -> tuple:
    """``index`` as a tuple with its one ``...`` (if any) replaced by whole slices; ``()`` for None.

    Example::

        expand_index((..., 1), 3)     # (slice(None), slice(None), 1)
    """
    if index is None:
        return ()
    if not isinstance(index, tuple):
        index = tuple(index) if isinstance(index, list) else (index,)
    dots = [i for i, s in enumerate(index) if s is Ellipsis]
    if len(dots) > 1:
        raise RegionError(f"index {index!r} has more than one '...'")
    if not dots:
        return index
    at = dots[0]
    return index[:at] + (slice(None),) * max(0, rank - len(index) + 1) + index[at + 1:]


def normalize_index(index: Any, shape: Sequence[int]) -> Index:
    """Turn ``index`` (ints, step-1 slices, one ``...``) into one ``slice(start, stop)`` per dimension.

    Example::

        normalize_index((..., 1), (4, 3))     # (slice(0, 4), slice(1, 2))
    """
    shape = tuple(int(d) for d in shape)
    index = expand_index(index, len(shape))
    if len(index) > len(shape):
        raise RegionError(f"index {index!r} has {len(index)} dimensions, the tensor has {len(shape)}")
    out = []
    for i, d in enumerate(shape):
        s = index[i] if i < len(index) else slice(None)
        if isinstance(s, (int, np.integer)):
            k = int(s) + d if s < 0 else int(s)
            if not 0 <= k < d:
                raise RegionError(f"index {int(s)} is out of range for dimension {i} of size {d}")
            s = slice(k, k + 1)
        if not isinstance(s, slice):
            raise RegionError(f"only integers, step-1 slices and '...' select a region, got {s!r}")
        start, stop, step = s.indices(d)
        if step != 1:
            raise RegionError(f"only step-1 slices select a region, got {s!r}")
        out.append(slice(start, max(start, stop)))
    return tuple(out)


def index_shape(index: Index) -> tuple[int, ...]:
    """The shape of the region ``index`` (concrete slices) selects."""
    return tuple(s.stop - s.start for s in index)


def overlap(region: Index, box: Index) -> tuple[Index, Index] | None:
    """Where ``region`` and ``box`` (both boxes of one tensor) meet: (that part in ``box``'s own
    coordinates, the same part in ``region``'s), or None when they do not meet.

    Example::

        overlap((slice(2, 6),), (slice(4, 8),))     # ((slice(0, 2),), (slice(2, 4),))
    """
    lo = [max(a.start, b.start) for a, b in zip(region, box)]
    hi = [min(a.stop, b.stop) for a, b in zip(region, box)]
    if any(h <= l for l, h in zip(lo, hi)):
        return None
    return (tuple(slice(l - b.start, h - b.start) for l, h, b in zip(lo, hi, box)),
            tuple(slice(l - r.start, h - r.start) for l, h, r in zip(lo, hi, region)))
