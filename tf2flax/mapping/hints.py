"""Helpers that make error messages say what was close and what was expected.

Example::

    close_matches("dense/kernal", ["dense/kernel", "dense/bias"])   # " Close names: 'dense/kernel'."
"""

from __future__ import annotations

import difflib
from typing import Any, Sequence

import numpy as np


def close_matches(name: str, candidates: Sequence[str], n: int = 3) -> str:
    """A sentence naming up to ``n`` candidates close to ``name`` (difflib), or ``''``."""
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    if not found:
        return ""
    return " Close names: " + ", ".join(repr(f) for f in found) + "."


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
