"""A tiny in-memory checkpoint with the reader's interface, for mapping unit tests (no TensorFlow).

Example::

    ckpt = FakeCheckpoint({"old/var1": np.zeros((2, 3), np.float32)})
    ckpt.read("old/var1", (slice(0, 1), slice(0, 3)))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tf2flax.errors import TensorNotFoundError


@dataclasses.dataclass(frozen=True)
class FakeVariable:
    """The fields of ``tf2flax.formats.object_graph.GraphVariable`` the mapping engine uses."""

    key: str
    object_path: str
    model_path: str
    full_name: str
    is_optimizer: bool = False


@dataclasses.dataclass(frozen=True)
class FakeGraph:
    variables: tuple[FakeVariable, ...]


class FakeCheckpoint:
    """``names``/``shape``/``dtype``/``read``/``object_graph``/``path`` over a dict of arrays.

    ``reads`` records every (name, index) read, so tests can check that planning reads nothing.
    """

    def __init__(self, tensors: dict[str, np.ndarray], graph: FakeGraph | None = None, path: str = "/fake/ckpt"):
        self.tensors = {k: np.asarray(v) for k, v in tensors.items()}
        self.names = sorted(self.tensors)
        self.object_graph = graph
        self.path = path
        self.reads: list[tuple[str, Any]] = []

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def list_variables(self) -> list[tuple[str, list[int]]]:
        return [(n, list(self.tensors[n].shape)) for n in self.names]

    def _get(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            raise TensorNotFoundError(f"{self.path}: no tensor named {name!r}")
        return self.tensors[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._get(name).shape)

    def dtype(self, name: str) -> np.dtype:
        return self._get(name).dtype

    def read(self, name: str, index: Any = None) -> np.ndarray:
        self.reads.append((name, index))
        value = self._get(name)
        return np.array(value if index is None else value[tuple(index)])


def tf2_variable(object_path: str, full_name: str = "", model_path: str = "", is_optimizer: bool = False
                 ) -> FakeVariable:
    """A TF2 variable record whose key is ``object_path + '/.ATTRIBUTES/VARIABLE_VALUE'``."""
    key = object_path + "/.ATTRIBUTES/VARIABLE_VALUE"
    return FakeVariable(key, object_path, model_path or object_path, full_name, is_optimizer)
