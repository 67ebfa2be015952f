"""A target file for ``python -m tf2flax suggest``: the Flax leaves (paths, shapes, dtypes) as JSON/YAML.

A nested mapping (or flat, with ``/`` in the keys) whose leaves are ``{"shape": [...], "dtype": "..."}``,
``[shape, dtype]`` or a bare shape (float32). Written from a model in three lines::

    import json, jax
    from flax import nnx
    json.dump(jax.tree_util.tree_map(lambda x: {"shape": list(x.shape), "dtype": str(x.dtype)},
                                     nnx.state(model, nnx.Param, nnx.BatchStat).to_pure_dict()),
              open("target.json", "w"))

Example::

    params = read_target_file("target.json")    # {'layers': {'0': {'kernel': ShapeDtypeStruct(...)}}}
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ...errors import MappingError, short_repr


def read_target_file(path: str | os.PathLike) -> dict[str, Any]:
    """The tree of ``jax.ShapeDtypeStruct`` a target file describes (see the module docstring)."""
    import jax

    from ...conversion.mapfile import read_data_file

    try:
        data = read_data_file(path)
    except MappingError as e:
        raise MappingError(str(e).replace("map file", "target file", 1)) from None
    if not isinstance(data, dict) or not data:
        raise MappingError(f"target file {os.fspath(path)}: expected a mapping of names to leaves "
                           '({"shape": [...], "dtype": "float32"})')

    def convert(node: Any, where: str) -> Any:
        leaf = _leaf(node)
        if leaf is not None:
            shape, dtype = leaf
            return jax.ShapeDtypeStruct(shape, dtype)
        if isinstance(node, dict):
            return {str(k): convert(v, f"{where}/{k}" if where else str(k)) for k, v in node.items()}
        raise MappingError(f"target file {os.fspath(path)}: {where!r} is {short_repr(node)}, neither a leaf "
                           '({"shape": [...], "dtype": "..."}, [shape, dtype] or a shape) nor a mapping')

    return convert(data, "")


def _leaf(node: Any) -> tuple[tuple[int, ...], np.dtype] | None:
    if isinstance(node, dict) and set(node) == {"shape", "dtype"}:
        shape, dtype = node["shape"], node["dtype"]
    elif isinstance(node, list) and len(node) == 2 and isinstance(node[0], list) and isinstance(node[1], str):
        shape, dtype = node
    elif isinstance(node, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in node):
        shape, dtype = node, "float32"
    else:
        return None
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise MappingError(f"target file: shape {short_repr(shape)} is not a list of sizes")
    try:
        import jax.numpy as jnp

        return tuple(shape), np.dtype(jnp.dtype(dtype))
    except TypeError:
        raise MappingError(f"target file: unknown dtype {short_repr(dtype)}") from None
