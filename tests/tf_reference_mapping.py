"""TensorFlow's own ``init_from_checkpoint``, run in a TF1 graph, as the reference for tf2flax's mapping.

A test describes the graph's variables (:class:`VarSpec`) and an assignment map whose targets are
names, or :class:`Var` / :class:`Parts` markers that stand for variable objects (a ``tf.Variable``
in TensorFlow, the leaf object of the target tree for tf2flax). :func:`run_tf` returns the values
TensorFlow initializes every variable to (or the exception it raises); :func:`target_tree` builds
the matching Flax-style tree, and :func:`resolve_markers` turns the markers into its leaf objects.

Example::

    prefix, values = write_reference_checkpoint(tmp_path)
    result = run_tf(prefix, {"new/var1": VarSpec((20, 2))}, {"old_scope_1/var1": "new/var1"})
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from tf_writers import tf

INITIAL = -1.0  # every graph variable starts here, so "not loaded" is visible


@dataclasses.dataclass(frozen=True)
class VarSpec:
    """A graph variable: shape, and ``parts`` along ``axis`` for a partitioned one."""

    shape: tuple[int, ...]
    parts: int | None = None
    axis: int = 0


@dataclasses.dataclass(frozen=True)
class Var:
    """Stands for the variable object ``name`` (a single variable)."""

    name: str


@dataclasses.dataclass(frozen=True)
class Parts:
    """Stands for ``var._get_variable_list()`` of partitioned variable ``name`` (or some of its parts)."""

    name: str
    only: tuple[int, ...] | None = None


@dataclasses.dataclass
class TFResult:
    """What TensorFlow did: each graph variable's shape, and its values or the error raised."""

    shapes: dict[str, tuple[int, ...]]
    values: dict[str, np.ndarray] | None
    error: Exception | None


def reference_values() -> dict[str, np.ndarray]:
    """The tensors of the reference checkpoint (the seed page's, plus scope-boundary and root ones)."""
    rng = np.random.default_rng(7)

    def r(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    return {
        "old_scope_1/var1": r(20, 2),
        "old_scope_1/var2": r(50, 4),
        "old_scope_2/var3": r(100, 100),
        "old_scope_2/var4": r(10, 6),          # saved partitioned into 3 slices
        "useful_scope/w": r(3),
        "useful_scope/sub/b": r(2),
        "useful_scope_1/w": r(3),
        "root_w": r(4),
    }


SAVED_PARTITIONS = {"old_scope_2/var4": 3}


def write_reference_checkpoint(directory: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """A TF1 ``Saver`` checkpoint of :func:`reference_values`; returns ``(prefix, values)``."""
    T = tf()
    v1 = T.compat.v1
    values = reference_values()
    g = T.Graph()
    with g.as_default():
        for name, value in values.items():
            parts = SAVED_PARTITIONS.get(name)
            if parts:
                v1.get_variable(name, shape=value.shape, initializer=_slices_of(value),
                                partitioner=v1.fixed_size_partitioner(parts, axis=0))
            else:
                v1.get_variable(name, initializer=T.constant(value))
        saver = v1.train.Saver()
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            prefix = saver.save(sess, str(Path(directory) / "model.ckpt"))
    return prefix, values


def _slices_of(full: np.ndarray):
    T = tf()

    def init(shape, dtype=None, partition_info=None):
        offset = partition_info.var_offset if partition_info is not None else [0] * len(shape)
        return T.constant(full[tuple(slice(o, o + int(d)) for o, d in zip(offset, shape))], dtype=dtype)

    return init


def run_tf(prefix: str, variables: dict[str, VarSpec], assignment_map: Any) -> TFResult:
    """Create ``variables`` in a fresh graph, ``init_from_checkpoint(prefix, map)``, run the initializers."""
    T = tf()
    v1 = T.compat.v1
    g = T.Graph()
    with g.as_default():
        created = {}
        for name, spec in variables.items():
            partitioner = None
            if spec.parts:
                partitioner = v1.fixed_size_partitioner(spec.parts, axis=spec.axis)
            created[name] = v1.get_variable(name, shape=spec.shape, partitioner=partitioner,
                                            initializer=v1.constant_initializer(INITIAL))
        graph_vars = v1.global_variables()
        shapes = {v.op.name: tuple(v.shape.as_list()) for v in graph_vars}

        def resolve(target: Any) -> Any:
            if isinstance(target, Var):
                return created[target.name]
            if isinstance(target, Parts):
                parts = created[target.name]._get_variable_list()
                return [parts[i] for i in target.only] if target.only is not None else parts
            if isinstance(target, list):
                return _flat_list(resolve(t) for t in target)
            return target

        pairs = assignment_map.items() if isinstance(assignment_map, dict) else assignment_map
        tf_map = [(k, resolve(t)) for k, t in pairs]
        try:
            v1.train.init_from_checkpoint(prefix, dict(tf_map) if isinstance(assignment_map, dict) else tf_map)
            with v1.Session(graph=g) as sess:
                sess.run(v1.global_variables_initializer())
                values = {v.op.name: sess.run(v) for v in graph_vars}
        except Exception as e:  # noqa: BLE001 - the reference's error, whatever its class
            return TFResult(shapes, None, e)
    return TFResult(shapes, values, None)


def target_tree(shapes: dict[str, tuple[int, ...]]) -> dict:
    """A nested dict with one float32 leaf per graph variable, at its name, filled with ``INITIAL``."""
    tree: dict = {}
    for name, shape in shapes.items():
        node = tree
        *scopes, leaf = name.split("/")
        for s in scopes:
            node = node.setdefault(s, {})
        node[leaf] = np.full(shape, INITIAL, np.float32)
    return tree


def leaf_at(tree: dict, path: str) -> Any:
    for k in path.split("/"):
        tree = tree[k]
    return tree


def resolve_markers(assignment_map: Any, tree: dict, shapes: dict[str, tuple[int, ...]]) -> Any:
    """The map with :class:`Var`/:class:`Parts` markers replaced by the tree's leaf objects."""

    def resolve(target: Any) -> Any:
        if isinstance(target, Var):
            return leaf_at(tree, target.name)
        if isinstance(target, Parts):
            n = sum(1 for s in shapes if s.startswith(target.name + "/part_"))
            idx = target.only if target.only is not None else range(n)
            return [leaf_at(tree, f"{target.name}/part_{i}") for i in idx]
        if isinstance(target, list):
            return _flat_list(resolve(t) for t in target)
        return target

    if isinstance(assignment_map, dict):
        return {k: resolve(t) for k, t in assignment_map.items()}
    return [(k, resolve(t)) for k, t in assignment_map]


def _flat_list(items: Any) -> list:
    """Resolved list members, with part lists spliced in (``[Parts(a, (0,)), Parts(b, (1,))]``)."""
    out: list = []
    for item in items:
        out.extend(item if isinstance(item, list) else [item])
    return out


def flat(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """``path -> numpy value`` of a nested dict."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flat(v, f"{prefix}{k}/"))
        return out
    return {prefix[:-1]: np.asarray(tree)}
