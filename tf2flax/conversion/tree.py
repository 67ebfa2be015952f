"""The output tree of a conversion: default names become leaf paths; paths Orbax would store wrongly
are refused; flat ``path -> array`` items become the nested dict Orbax saves.

Example::

    settle_paths(["w", "w/Adam"])      # {'w': 'w/__value__', 'w/Adam': 'w/Adam'}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import MappingError, clip

# Leaves that are both a leaf and the scope of other leaves (TF1 'w' and its slot 'w/Adam') keep
# their value one level down, under this key.
VALUE_KEY = "__value__"


# Bounds on one output path: JAX cannot restore a tree ~1000 levels deep, Orbax's OCDBT store refuses
# keys over 64 KiB (16000 characters are at most 64000 UTF-8 bytes), and longer names are not names
# a model has (a hostile checkpoint's 200 KB name would cost gigabytes to settle).
MAX_DEPTH, MAX_PATH_CHARS = 256, 16000


def check_path(path: str, source: str, where: str) -> None:
    """Refuse an output path deeper than ``MAX_DEPTH`` levels or longer than ``MAX_PATH_CHARS``;
    ``source`` names the checkpoint tensor, ``where`` the checkpoint."""
    depth = path.count("/") + 1
    if depth > MAX_DEPTH or len(path) > MAX_PATH_CHARS:
        at = "" if path == source else f" at output path {clip(path, 60)}"
        raise MappingError(f"{where}: tensor {clip(source, 60)}{at}: a path {depth} levels deep and {len(path)} "
                           f"characters long; convert writes at most {MAX_DEPTH} levels and {MAX_PATH_CHARS} "
                           "characters (rename it with a map or rules)")


def settle_paths(paths: list[str]) -> dict[str, str]:
    """``path -> output path``: a path that is also the scope of other paths moves to ``<path>/__value__``.

    Example::

        settle_paths(["w", "w/Adam"])      # {'w': 'w/__value__', 'w/Adam': 'w/Adam'}
    """
    scopes = set(_scopes(paths))
    return {p: f"{p}/{VALUE_KEY}" if p in scopes else p for p in paths}


def _scopes(paths: list[str]) -> dict[str, str]:
    """``{path: another path it is the scope of}``, for the paths that are scopes of others.

    In the order of key lists, everything inside a scope comes right after it: one pass over the
    sorted paths finds them, in time and memory linear in the paths' length (times a log).
    """
    ordered = sorted((p.split("/"), p) for p in set(paths))
    return {p: q for (keys, p), (next_keys, q) in zip(ordered, ordered[1:])
            if len(next_keys) > len(keys) and next_keys[: len(keys)] == keys}


def check_tree(sources: list[tuple[str, str]], where: str) -> None:
    """Refuse output trees that would lose a tensor: two sources at one path, a leaf that is also the
    scope of another, or two paths Orbax stores under one parameter name (it joins keys with '.':
    'a.b' and 'a/b'). ``sources``: ``(output path, source description)``; ``where``: the checkpoint.

    Example::

        check_tree([("w", "w"), ("w/Adam", "w/Adam")], ckpt.path)    # MappingError: 'w' is also a scope
    """
    by_path: dict[str, str] = {}
    stored: dict[str, str] = {}
    for path, source in sources:
        if path in by_path:
            raise MappingError(f"{where}: checkpoint tensors {clip(by_path[path])} and {clip(source)} would both "
                               f"be written to {clip(path)}; map or rename one of them")
        by_path[path] = source
        name = path.replace("/", ".")
        if name in stored:
            raise MappingError(f"{where}: output leaves {clip(stored[name])} (from {clip(by_path[stored[name]])}) "
                               f"and {clip(path)} (from {clip(source)}) would both be stored by Orbax as "
                               f"{clip(name)} (it joins keys with '.'); rename one with a map or rules")
        stored[name] = path
    scopes = _scopes(list(by_path))
    if scopes:
        scope, inner = min(scopes.items())
        raise MappingError(f"{where}: output leaf {clip(scope)} (from {clip(by_path[scope])}) is also the scope "
                           f"of {clip(inner)} (from {clip(by_path[inner])}); map one of them elsewhere")


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
