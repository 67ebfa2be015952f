"""The output tree of a conversion: default names become leaf paths; paths Orbax would store wrongly
are refused; flat ``path -> array`` items become the nested dict Orbax saves.

Example::

    settle_paths(["w", "w/Adam"])      # {'w': 'w/__value__', 'w/Adam': 'w/Adam'}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import MappingError

# Leaves that are both a leaf and the scope of other leaves (TF1 'w' and its slot 'w/Adam') keep
# their value one level down, under this key.
VALUE_KEY = "__value__"


def settle_paths(paths: list[str]) -> dict[str, str]:
    """``path -> output path``: a path that is also the scope of other paths moves to ``<path>/__value__``.

    Example::

        settle_paths(["w", "w/Adam"])      # {'w': 'w/__value__', 'w/Adam': 'w/Adam'}
    """
    scopes = {p[:i] for p in paths for i, c in enumerate(p) if c == "/"}
    return {p: f"{p}/{VALUE_KEY}" if p in scopes else p for p in paths}


def check_tree(paths: list[str]) -> None:
    """Refuse output trees Orbax would store wrongly: a leaf that is also a scope, or two leaves whose
    key paths join to the same Orbax parameter name (Orbax joins keys with '.': 'a.b' and 'a/b')."""
    leaves = set(paths)
    for p in paths:
        for i, c in enumerate(p):
            if c == "/" and p[:i] in leaves:
                raise MappingError(f"output leaf {p[:i]!r} is also the scope of {p!r}; map one of them elsewhere")
    seen: dict[str, str] = {}
    for p in paths:
        stored = p.replace("/", ".")
        if stored in seen:
            raise MappingError(f"output leaves {seen[stored]!r} and {p!r} would both be stored by Orbax as "
                               f"{stored!r} (it joins keys with '.'); rename one with a map or rules")
        seen[stored] = p


def nest(items: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    """Flat ``(path, array)`` items as the nested dict of their ``/``-separated paths."""
    tree: dict[str, Any] = {}
    for path, value in items:
        *scopes, leaf = path.split("/")
        node = tree
        for s in scopes:
            node = node.setdefault(s, {})
        node[leaf] = value
    return tree
