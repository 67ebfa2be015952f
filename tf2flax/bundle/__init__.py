"""The bundle reader: TensorFlow V2 checkpoints (``.index`` table + ``.data-*`` shards)."""

from .object_graph import GraphVariable, ObjectGraph
from .reader import Checkpoint, ReadStats, TensorInfo, TensorSlice, open_checkpoint

__all__ = ["Checkpoint", "GraphVariable", "ObjectGraph", "ReadStats", "TensorInfo", "TensorSlice", "open_checkpoint"]
