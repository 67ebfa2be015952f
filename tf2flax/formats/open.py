"""Opening a checkpoint: find what a path holds (``locate``), then open it with its format's class.

Example::

    with open_checkpoint("/runs/bert") as ckpt:
        print(ckpt.opened)              # "V2 checkpoint: /runs/bert/model.ckpt-1000"
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import CheckpointNotFoundError, UnsupportedFormatError
from .base import Checkpoint
from .locate import locate
from .object_graph import OBJECT_GRAPH_KEY
from .v2 import V2Checkpoint


def open_checkpoint(path: str | os.PathLike, verify_checksums: bool = True, verify_regions: bool = False,
                    mmap: bool = True, keras_config: Any = None) -> Checkpoint:
    """Open a checkpoint: a directory (through its ``checkpoint`` file), a prefix, or a URL.

    A SavedModel or TF Hub module directory opens its ``variables/variables``; V1 checkpoints (one
    file, or ``name-?????-of-N`` shards) open as a :class:`~tf2flax.formats.v1.V1Checkpoint`, which
    offers the same interface. ``ckpt.opened`` says what was opened.

    ``verify_checksums``: check each tensor's CRC32C on whole reads (TensorFlow does this too).
    ``verify_regions``: also verify region reads, by reading each stored tensor they touch whole.
    ``mmap``: map local data files and return read-only views of them (no copy); ``False`` reads
    every tensor into memory of its own, for files that may be rewritten in place while open.
    ``keras_config``: for a Keras ``.weights.h5``, the model's ``config.json`` or ``.keras`` (a path, or
    the parsed dict), to name its variables by their Keras paths (``dense_1/kernel``); see docs/keras.md.

    Keras files (``.keras``, ``.weights.h5``, Keras 2 ``.h5``) open as a
    :class:`~tf2flax.formats.keras.KerasCheckpoint`.

    Example::

        with tf2flax.open_checkpoint("/runs/bert") as ckpt:   # latest checkpoint in the directory
            ckpt.read("bert/pooler/dense/bias")
    """
    where = locate(path)
    if where.format == "keras":
        from .keras import KerasCheckpoint

        return KerasCheckpoint(where.store, where.prefix, keras_config=keras_config)
    if keras_config is not None:
        raise UnsupportedFormatError(f"{where.describe()}: keras_config names Keras variables, and this is not a "
                                     "Keras file")
    if where.format == "v1":
        from .v1 import V1Checkpoint

        ckpt: Checkpoint = V1Checkpoint(where.store, where.prefix, where.files, verify_checksums=verify_checksums,
                                        verify_regions=verify_regions)
    else:
        ckpt = V2Checkpoint(where.store, where.prefix, verify_checksums=verify_checksums, verify_regions=verify_regions,
                          mmap=mmap)
    ckpt.opened = where.describe()
    if where.container and all(n == OBJECT_GRAPH_KEY for n in ckpt.names):
        ckpt.close()
        raise CheckpointNotFoundError(
            f"{ckpt.path}: a {where.container} with no variables (its checkpoint holds only the object "
            "graph): its weights, if any, are constants in the graph, which tf2flax does not "
            "read; tf2flax reads the variables checkpoint (variables/variables) of a SavedModel")
    return ckpt
