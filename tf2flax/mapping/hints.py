"""Helpers that make error messages say what was close and what was expected.

Example::

    close_matches("dense/kernal", ["dense/kernel", "dense/bias"])   # " Close names: 'dense/kernel'."
"""

from __future__ import annotations

import bisect
import difflib
from typing import Any, Sequence

import numpy as np


_WINDOW = 100


def close_matches(name: str, candidates: Sequence[str], n: int = 3) -> str:
    """A sentence naming up to ``n`` candidates close to ``name`` (difflib), or ``''``.

    Large name lists are first cut to the names next to ``name`` in sorted order, forwards and
    backwards (long shared prefixes or suffixes), so a typo among 100k tensor names is still
    reported in a fraction of a second.
    """
    if len(candidates) > 4 * _WINDOW:
        forward = _neighbours(name, sorted(candidates))
        backward = [c[::-1] for c in _neighbours(name[::-1], sorted(c[::-1] for c in candidates))]
        candidates = list(dict.fromkeys(forward + backward))
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    if not found:
        return ""
    return " Close names: " + ", ".join(repr(f) for f in found) + "."


def _neighbours(name: str, ordered: list[str]) -> list[str]:
    at = bisect.bisect_left(ordered, name)
    return ordered[max(0, at - _WINDOW): at + _WINDOW]


def shape_hint(src: Sequence[int], dst: Sequence[int]) -> str:
    """A suggestion for a shape mismatch that a transpose or reshape would fix, or ``''``."""
    src, dst = tuple(src), tuple(dst)
    if len(src) > 1 and src[::-1] == dst:
        return " The reversed shape matches: add transforms={<target>: 'transpose'}."
    if sorted(src) == sorted(dst) and len(src) > 1:
        return " A permutation of the shape matches: add transforms={<target>: ('transpose', perm)}."
    if int(np.prod(src)) == int(np.prod(dst)):
        return f" The sizes agree: add transforms={{<target>: ('reshape', {list(dst)})}}."
    return ""


def dtype_name(dtype: Any) -> str:
    """A short dtype name for messages (``string`` for TensorFlow strings)."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        return str(dtype)
    return "string" if dtype.kind in "OSU" else dtype.name
