"""Checkpoint formats, one module each, behind one interface (``base.Checkpoint``).

- ``v2.py``: TensorFlow V2 bundles (``.index`` table + ``.data-*`` shards)
- ``v1.py``: TensorFlow V1 (``SaverDef.V1``) checkpoints
- ``keras.py``: Keras ``.keras``, ``.weights.h5`` and Keras 2 ``.h5`` files (h5py, imported lazily), with
  ``keras_names.py`` (Keras variable paths from ``config.json``) and ``hdf5.py`` (HDF5 over the storage
  layer, checked before the HDF5 library trusts it)
- ``locate.py``: what a path holds (state files, SavedModel and Hub directories, V1 shards)
- ``open.py``: ``open_checkpoint``, which locates a path and opens it with its format's class
- shared pieces: the table format (``table.py``), slice keys, dtypes, protos, the TF2 object graph
"""

from .base import Checkpoint, ReadStats, TensorInfo, TensorSlice
from .object_graph import GraphVariable, ObjectGraph
from .open import open_checkpoint

__all__ = ["Checkpoint", "GraphVariable", "ObjectGraph", "ReadStats", "TensorInfo", "TensorSlice", "open_checkpoint"]
