"""The TF2 object graph (``_CHECKPOINTABLE_OBJECT_GRAPH``): every variable's names.

A TF2 key such as ``optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE`` is the first
breadth-first path to a variable; the graph knows every path, so each variable also gets its
*model-side* path (the first one that does not pass through an optimizer) and its TF1-style
``full_name``.

Example::

    graph = ObjectGraph.parse(serialized)
    [(v.key, v.model_path, v.full_name) for v in graph.variables]
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from google.protobuf.message import DecodeError

from .protos import TrackableObjectGraph

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_SLOT_MARKER = "/.OPTIMIZER_SLOT/"
# A real graph's model paths are about as long as its checkpoint keys, which it holds itself.
_PATH_BUDGET_FACTOR, _PATH_BUDGET_FLOOR = 64, 16 << 20


def _escape(local_name: str) -> str:
    return local_name.replace(".", "..").replace("/", ".S")


def _is_optimizer_name(local_name: str) -> bool:
    return "optimizer" in local_name.lower()


@dataclasses.dataclass(frozen=True)
class GraphVariable:
    """One serialized attribute of the object graph (almost always a variable's value)."""

    key: str
    object_path: str
    model_path: str
    full_name: str
    is_optimizer: bool


@dataclasses.dataclass(frozen=True)
class ObjectGraph:
    """The parsed object graph: its variables, by checkpoint key."""

    variables: tuple[GraphVariable, ...]

    def by_key(self) -> dict[str, GraphVariable]:
        return {v.key: v for v in self.variables}

    @classmethod
    def parse(cls, data: bytes) -> "ObjectGraph":
        """Parse a serialized ``TrackableObjectGraph``; ValueError if it does not decode."""
        graph = TrackableObjectGraph()
        try:
            graph.ParseFromString(data)
        except DecodeError as e:
            raise ValueError(f"object graph does not decode: {e}") from None
        nodes = graph.nodes
        if not nodes:
            return cls(())
        model_paths = _model_paths(graph, _PATH_BUDGET_FACTOR * len(data) + _PATH_BUDGET_FLOOR)
        slot_nodes = {s.slot_variable_node_id for n in nodes for s in n.slot_variables}
        variables = []
        for node_id, node in enumerate(nodes):
            model_path = model_paths.get(node_id)
            for attr in node.attributes:
                key = attr.checkpoint_key
                suffix = "" if key.endswith(VALUE_SUFFIX) else "/.ATTRIBUTES/" + attr.name
                object_path = key[: -len(VALUE_SUFFIX)] if key.endswith(VALUE_SUFFIX) else key
                is_slot = node_id in slot_nodes or _SLOT_MARKER in key
                model = model_path + suffix if model_path is not None and not is_slot else object_path
                variables.append(GraphVariable(
                    key=key, object_path=object_path, model_path=model, full_name=attr.full_name,
                    is_optimizer=is_slot or model_path is None))
        return cls(tuple(variables))


def _model_paths(graph: Any, budget: int) -> dict[int, str]:
    """The first breadth-first path to each node that crosses no optimizer.

    One visit per node, so shared objects cost nothing extra; the paths are joined only after
    checking that together they stay under ``budget`` characters (ValueError).
    """
    nodes = graph.nodes
    optimizers = {i for i, n in enumerate(nodes) if n.slot_variables}
    parent: dict[int, tuple[int, str]] = {}  # in breadth-first order: parents before children
    length = {0: -1}  # a path's length in characters; the root's children have no leading "/"
    queue = collections.deque([0])
    while queue:
        node_id = queue.popleft()
        for child in nodes[node_id].children:
            cid = child.node_id
            if (cid in length or not 0 <= cid < len(nodes) or cid in optimizers
                    or _is_optimizer_name(child.local_name)):
                continue
            name = _escape(child.local_name)
            parent[cid] = (node_id, name)
            length[cid] = length[node_id] + 1 + len(name)
            queue.append(cid)
    total = sum(length[i] * (1 + len(nodes[i].attributes)) for i in parent)
    if total > budget:
        raise ValueError(f"its object paths add up to {total} characters, more than the {budget} that a "
                         "graph of this size can need (a hostile or damaged graph)")
    paths = {0: ""}
    for node_id, (up, name) in parent.items():
        paths[node_id] = f"{paths[up]}/{name}" if up else name
    del paths[0]
    return paths
