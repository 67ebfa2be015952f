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
from .bundle import Checkpoint, open_checkpoint
from .convert import ConvertResult, convert
from .restore import LoadResult, init_params, plan_params

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``init_opt_state``/``OptStateReport`` on first use: optax is imported only by those who need it."""
    if name in ("init_opt_state", "OptStateReport"):
        from . import optimizer

        return getattr(optimizer, name)
    raise AttributeError(f"module 'tf2flax' has no attribute {name!r}")


def list_variables(path: str | os.PathLike) -> list[tuple[str, list[int]]]:
    """Drop-in for ``tf.train.list_variables``: [(name, shape)] sorted by name."""
    return open_checkpoint(path).list_variables()


def load_variable(path: str | os.PathLike, name: str) -> np.ndarray:
    """Drop-in for ``tf.train.load_variable``: one tensor as a numpy array."""
    return open_checkpoint(path).read(name)


__all__ = ["Checkpoint", "ConvertResult", "LoadResult", "OptStateReport", "convert", "errors", "init_opt_state",
           "init_params", "list_variables", "load_variable", "open_checkpoint", "plan_params"]
