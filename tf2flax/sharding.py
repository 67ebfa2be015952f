"""Where each target leaf goes: shardings from the targets, a pytree, a function, or regex rules.

Example::

    mesh = jax.make_mesh((4, 2), ("data", "model"))
    shardings = resolve_shardings(targets, mesh=mesh, rules=[
        (r"embedding$", P("model", None)),
        (r"kernel$", P(None, "model")),
    ])
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from .errors import MappingError
from .patterns import compile_pattern

ShardingRules = Sequence[tuple[str, PartitionSpec]]


def keypath_str(path: Sequence[Any]) -> str:
    """A jax key path as tf2flax names leaves: keys joined with ``/``."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _from_pytree(tree: Any) -> dict[str, Sharding]:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, Sharding) or x is None)[0]
    return {keypath_str(path): leaf for path, leaf in leaves if isinstance(leaf, Sharding)}


def resolve_shardings(
    targets: Mapping[str, Any],
    shardings: Any = None,
    *,
    mesh: Mesh | None = None,
    rules: ShardingRules | None = None,
) -> dict[str, Sharding]:
    """{target path: sharding} for every target with one.

    Precedence: ``shardings`` (a dict by path, a pytree shaped like the params, or a function
    ``(path, leaf) -> Sharding | None``), then ``rules`` with ``mesh`` (first regex that
    ``re.search``-matches the path (on RE2) wins; unmatched leaves are replicated over the mesh), then the
    sharding each target leaf carries (``jax.Array.sharding``, ``ShapeDtypeStruct.sharding``).
    """
    resolved = {path: leaf.sharding for path, leaf in targets.items() if getattr(leaf, "sharding", None) is not None}
    if rules is not None:
        if mesh is None:
            raise MappingError("sharding rules need a mesh: pass mesh=jax.make_mesh(...)")
        compiled = [(compile_pattern(pattern, "sharding rule"), spec) for pattern, spec in rules]
        for path in targets:
            spec = next((spec for pattern, spec in compiled if pattern.search(path)), PartitionSpec())
            resolved[path] = NamedSharding(mesh, spec)
    if shardings is None:
        return resolved
    if callable(shardings) and not isinstance(shardings, Mapping):
        given = {path: shardings(path, leaf) for path, leaf in targets.items()}
    elif isinstance(shardings, Mapping) and all(isinstance(k, str) and "/" in k for k in shardings):
        given = dict(shardings)
    else:
        given = _from_pytree(shardings)
    unknown = sorted(set(given) - set(targets))
    if unknown:
        raise MappingError(f"shardings name leaves that are not in the target tree: {', '.join(unknown[:5])}")
    resolved.update({path: s for path, s in given.items() if s is not None})
    return resolved


def check_sharding(path: str, shape: tuple[int, ...], sharding: Sharding) -> None:
    """MappingError if ``sharding`` cannot hold an array of ``shape`` (rank or mesh axis mismatch)."""
    try:
        sharding.shard_shape(shape)
    except Exception as e:  # jax raises several types (IndivisibleError, ValueError, TypeError)
        raise MappingError(f"target {path!r}: sharding {sharding} does not fit shape {list(shape)}: {e}") from None


