"""tf2flax: TensorFlow checkpoints into JAX/Flax, without TensorFlow.

Example::

    import tf2flax
    ckpt = tf2flax.open_checkpoint("/runs/bert/model.ckpt-1000")
    params = tf2flax.init_params(ckpt, {"bert/encoder/": "params/encoder/"}, params)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import errors
from .formats import Checkpoint, open_checkpoint

__version__ = "0.1.0"

# jax, flax, orbax and tensorstore load on first use of what needs them: `import tf2flax`, the
# reader, `list_variables` and `python -m tf2flax ls` of a local checkpoint stay light.
_LAZY = {"convert": "conversion", "ConvertResult": "conversion", "init_params": "restore", "LoadResult": "restore",
         "plan_params": "restore", "suggest_mapping": "restore", "AutoMap": "mapping.auto", "init_opt_state": "optimizer", "OptStateReport": "optimizer"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tf2flax' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def list_variables(path: str | os.PathLike) -> list[tuple[str, list[int]]]:
    """Drop-in for ``tf.train.list_variables``: [(name, shape)] sorted by name."""
    return open_checkpoint(path).list_variables()


def load_variable(path: str | os.PathLike, name: str) -> np.ndarray:
    """Drop-in for ``tf.train.load_variable``: one tensor as a numpy array of its own (writable)."""
    with open_checkpoint(path, mmap=False) as ckpt:
        return ckpt.read(name)


__all__ = ["Checkpoint", "ConvertResult", "LoadResult", "OptStateReport", "convert", "errors", "init_opt_state",
           "init_params", "list_variables", "load_variable", "open_checkpoint", "plan_params", "suggest_mapping",
           "AutoMap"]
