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
    paths: tuple[str, ...]


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
        paths, optimizer_side = _all_paths(graph)
        slot_nodes = {s.slot_variable_node_id for n in nodes for s in n.slot_variables}
        variables = []
        for node_id, node in enumerate(nodes):
            node_paths = paths.get(node_id, [])
            model_paths = [p for p, opt in zip(node_paths, optimizer_side.get(node_id, [])) if not opt]
            for attr in node.attributes:
                key = attr.checkpoint_key
                suffix = "" if key.endswith(VALUE_SUFFIX) else "/.ATTRIBUTES/" + attr.name
                object_path = key[: -len(VALUE_SUFFIX)] if key.endswith(VALUE_SUFFIX) else key
                is_slot = node_id in slot_nodes or _SLOT_MARKER in key
                model = model_paths[0] + suffix if model_paths and not is_slot else object_path
                variables.append(GraphVariable(
                    key=key, object_path=object_path, model_path=model, full_name=attr.full_name,
                    is_optimizer=is_slot or not model_paths,
                    paths=tuple(p + suffix for p in node_paths)))
        return cls(tuple(variables))


def _all_paths(graph: Any) -> tuple[dict[int, list[str]], dict[int, list[bool]]]:
    """Every simple path from the root to each node, breadth-first, and whether it crosses an optimizer."""
    nodes = graph.nodes
    optimizers = {i for i, n in enumerate(nodes) if n.slot_variables}
    paths: dict[int, list[str]] = collections.defaultdict(list)
    flags: dict[int, list[bool]] = collections.defaultdict(list)
    queue = collections.deque([(0, "", False, frozenset([0]))])
    budget = 64 * len(nodes) + 1024  # graphs with many shared objects: keep the first paths found
    while queue and budget:
        node_id, path, via_optimizer, seen = queue.popleft()
        for child in nodes[node_id].children:
            cid = child.node_id
            if cid in seen or not 0 <= cid < len(nodes):
                continue
            child_path = f"{path}/{_escape(child.local_name)}" if path else _escape(child.local_name)
            opt = via_optimizer or cid in optimizers or _is_optimizer_name(child.local_name)
            paths[cid].append(child_path)
            flags[cid].append(opt)
            budget -= 1
            queue.append((cid, child_path, opt, seen | {cid}))
    return paths, flags
