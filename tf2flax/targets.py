"""The target side: a Flax parameter pytree seen as named leaves.

A leaf's name is its key path joined with ``/``: ``{'params': {'Dense_0': {'kernel': x}}}`` has the
leaf ``params/Dense_0/kernel``; an NNX state path ``('layers', 0, 'kernel')`` is ``layers/0/kernel``.
Supported trees: nested dicts/lists (Flax linen ``variables``, ``FrozenDict``) of numpy/jax arrays or
``jax.ShapeDtypeStruct``; ``nnx.State``; ``nnx.Module``. NNX RNG state (``nnx.RngState``) is not a
target: it is never in a checkpoint.

Example::

    leaves = flatten_targets({"params": {"Dense_0": {"kernel": np.zeros((4, 8))}}})
    leaves["params/Dense_0/kernel"].shape          # (4, 8)
    new = unflatten_targets(params, {"params/Dense_0/kernel": np.ones((4, 8))})
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Mapping

import jax
import numpy as np

from .errors import MappingError


@dataclasses.dataclass(frozen=True)
class TargetLeaf:
    """One target leaf: its path, shape, dtype, sharding (or None) and the original leaf object.

    ``value`` is the leaf as found in the tree: an array, a ``jax.ShapeDtypeStruct`` or an
    ``nnx.Variable`` (the handle users may pass as a mapping target).
    """

    path: str
    shape: tuple[int, ...]
    dtype: Any
    sharding: Any
    value: Any


def _nnx() -> Any:
    """``flax.nnx`` if something has imported it, else None: an nnx object can only exist once it is
    loaded, so dict trees (and ``convert``) never pay for importing flax (seconds: it loads IPython)."""
    return sys.modules.get("flax.nnx")


def _is_variable(x: Any) -> bool:
    nnx = _nnx()
    return nnx is not None and isinstance(x, nnx.Variable)


def _is_module(x: Any) -> bool:
    nnx = _nnx()
    return nnx is not None and isinstance(x, nnx.Module)


def _is_leaf(x: Any) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct) or _is_variable(x)


def _key_str(k: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _path_str(keypath: tuple) -> str:
    return "/".join(_key_str(k) for k in keypath)


def _tree(params: Any) -> Any:
    return _nnx().state(params) if _is_module(params) else params


def _leaf(path: str, x: Any) -> TargetLeaf | None:
    if _is_variable(x):
        if isinstance(x, _nnx().RngState):
            return None
        raw = x.get_raw_value()
        return TargetLeaf(path, tuple(np.shape(raw)), raw.dtype if hasattr(raw, "dtype") else np.result_type(raw),
                          getattr(raw, "sharding", None), x)
    if isinstance(x, jax.ShapeDtypeStruct):
        return TargetLeaf(path, tuple(x.shape), x.dtype, getattr(x, "sharding", None), x)
    dtype = x.dtype if hasattr(x, "dtype") else np.result_type(x)
    return TargetLeaf(path, tuple(np.shape(x)), dtype, getattr(x, "sharding", None), x)


def flatten_targets(params: Any) -> dict[str, TargetLeaf]:
    """``path -> TargetLeaf`` for every leaf of ``params`` (dict tree, ``nnx.State`` or ``nnx.Module``).

    Example::

        flatten_targets(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))   # {'bias': ..., 'kernel': ...}
    """
    out: dict[str, TargetLeaf] = {}
    for keypath, x in jax.tree_util.tree_flatten_with_path(_tree(params), is_leaf=_is_leaf)[0]:
        path = _path_str(keypath)
        leaf = _leaf(path, x)
        if leaf is None:
            continue
        if path in out:
            raise MappingError(f"two leaves of the target tree have the same name {path!r} "
                               "(a dict key containing '/'?)")
        out[path] = leaf
    return out


def unflatten_targets(params: Any, values: Mapping[str, Any]) -> Any:
    """``params`` with the leaves named in ``values`` replaced; every other leaf unchanged.

    An ``nnx.Module`` is updated in place (``nnx.update``) and returned; an ``nnx.State`` gives a new
    ``State`` (its Variables keep their metadata); other trees give the same structure.

    Example::

        new_vars = unflatten_targets(variables, {"params/Dense_0/bias": np.ones(8, np.float32)})
    """
    known = flatten_targets(params)
    missing = sorted(set(values) - set(known))
    if missing:
        raise MappingError(f"values for names that are not leaves of the target tree: {missing}")

    def replace(keypath: tuple, x: Any) -> Any:
        path = _path_str(keypath)
        if path not in values:
            return x
        if _is_variable(x):
            return x.replace(value=values[path])
        return values[path]

    new = jax.tree_util.tree_map_with_path(replace, _tree(params), is_leaf=_is_leaf)
    if _is_module(params):
        _nnx().update(params, new)
        return params
    return new


def handle_index(targets: Mapping[str, TargetLeaf]) -> dict[int, list[str]]:
    """``id(leaf object) -> [paths]``, to resolve an ``nnx.Variable`` (or leaf array) given as a target.

    Example::

        paths = handle_index(flatten_targets(model))[id(model.linear.kernel)]   # ['linear/kernel']
    """
    index: dict[int, list[str]] = {}
    for path, leaf in targets.items():
        index.setdefault(id(leaf.value), []).append(path)
    return index
