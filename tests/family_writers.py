"""Real TensorFlow checkpoints of model families (scanned layers, T5, BERT), for the stacking and preset
tests. Every file is written by TensorFlow itself, with the families' exact variable names.

Example::

    prefix = write_tf1_variables(tmp_path, {"layer_0/w": np.ones((2, 3), np.float32)})
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tf_writers import _graph_session_config, _slice_initializer, tf


def write_tf1_variables(directory: str | os.PathLike, values: dict[str, np.ndarray],
                        partitioned: dict[str, tuple[int, int]] | None = None, sharded: bool = True) -> str:
    """A TF1 graph-mode ``Saver`` checkpoint of ``values`` (name -> array); returns its prefix.

    ``partitioned[name] = (parts, axis)`` saves that variable with ``fixed_size_partitioner`` (one
    full-shape key with slices, as TF1 does). With ``sharded``, variables alternate between two CPU
    devices, so the checkpoint has two data files.
    """
    T = tf()
    v1 = T.compat.v1
    partitioned = partitioned or {}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    g = T.Graph()
    with g.as_default():
        for i, (name, value) in enumerate(sorted(values.items())):
            with T.device(f"/cpu:{i % 2 if sharded else 0}"):
                if name in partitioned:
                    parts, axis = partitioned[name]
                    v1.get_variable(name, shape=value.shape, dtype=T.as_dtype(value.dtype),
                                    initializer=_slice_initializer(value),
                                    partitioner=v1.fixed_size_partitioner(parts, axis=axis))
                else:
                    v1.Variable(value, name=name, dtype=T.as_dtype(value.dtype), use_resource=False)
        saver = v1.train.Saver(sharded=sharded)
        with v1.Session(graph=g, config=_graph_session_config()) as sess:
            sess.run(v1.global_variables_initializer())
            return saver.save(sess, str(directory / "model.ckpt"), global_step=0)


def seeded(shape: tuple[int, ...], seed: int, dtype: type = np.float32) -> np.ndarray:
    """Distinct, reproducible values of ``shape``."""
    return (np.random.default_rng(seed).standard_normal(shape)).astype(dtype)
