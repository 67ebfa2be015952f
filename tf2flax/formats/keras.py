"""Reading Keras weights files: ``.keras`` archives, Keras 3 ``.weights.h5``, Keras 2 ``.h5``.

All three hold HDF5 (read with h5py, imported only here):

- a ``.keras`` file is a zip of ``config.json``, ``metadata.json`` and ``model.weights.h5``. Keras
  stores the weights member uncompressed, so it is read in place (HDF5 over the member's byte range
  of the zip); a deflated member is decompressed into memory up to :data:`MAX_INFLATED_BYTES`.
  Variables are named by their Keras paths (``mha/query/kernel``), derived from ``config.json``
  (``keras_names.py``); the stored paths (``layers/dense/vars/0``) work as well.
- a Keras 3 ``.weights.h5``: the same HDF5, alone. Names are the stored paths, or Keras paths when
  ``keras_config`` (the model's ``config.json`` or ``.keras``) is given.
- a Keras 2 ``.h5`` (``model.save("m.h5")``, ``save_weights("m.h5")``): each weight as Keras names it,
  without ``:0`` (``conv1_conv/kernel``), from the file's group tree.

Optimizer variables are listed under ``optimizer/...``. Opening walks and checks the whole HDF5
tree (``hdf5.py``) and reads no tensor data, nor any string attribute (a damaged one can hang the
HDF5 library). A region read is an HDF5 hyperslab selection: only the rows and columns asked for are
read (for chunked, compressed datasets: the chunks they touch, each decompressed whole). Remote
files (URLs) are read through the store's byte ranges, their size taken from the file itself.

Example::

    with open_checkpoint("model.keras") as ckpt:               # a KerasCheckpoint
        ckpt.opened                                          # 'Keras 3 .keras archive: /m/model.keras ...'
        ckpt.read("dense_1/kernel", np.s_[:, :8])
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import zipfile
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, UnsupportedFormatError, clip
from ..storage import LocalStore, Store, open_store
from .base import Checkpoint, ReadStats, StoredTensor, TensorInfo, squeezed
from .hdf5 import REMOTE_BLOCK_BYTES, OpenHDF5, WindowFile, datasets, open_hdf5, short_error
from .keras_names import keras2_names, keras2_weight, keras3_names

WEIGHTS_MEMBER = "model.weights.h5"
CONFIG_MEMBER = "config.json"
READS = ("tf2flax reads TensorFlow checkpoints (prefix.index + prefix.data-* files, or V1 checkpoint files), "
         "SavedModel directories and Keras .keras, .weights.h5 and .h5 files")
MAX_INFLATED_BYTES = 1 << 30
MAX_INFLATION = 100  # weights barely compress; a member inflating more than this is a zip bomb
MAX_CONFIG_BYTES = 64 << 20
_VARS = re.compile(r"^(?:(.*)/)?vars/\d+$")
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")
# numpy dtype -> TensorFlow DataType enum (what TensorInfo carries for every format)
_ENUMS = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3, np.dtype(np.uint8): 4,
          np.dtype(np.int16): 5, np.dtype(np.int8): 6, np.dtype(np.complex64): 8, np.dtype(np.int64): 9,
          np.dtype(np.bool_): 10, np.dtype(ml_dtypes.bfloat16): 14, np.dtype(np.uint16): 17,
          np.dtype(np.complex128): 18, np.dtype(np.float16): 19, np.dtype(np.uint32): 22, np.dtype(np.uint64): 23}


class MemoryStore:
    """One file's bytes held in memory (a ``.keras`` member that had to be decompressed)."""

    def __init__(self, name: str, data: bytes, shown: str):
        self.location, self.name, self.data, self.shown = "", name, data, shown

    def describe(self, name: str) -> str:
        return self.shown

    def exists(self, name: str) -> bool:
        return name == self.name

    def size(self, name: str) -> int:
        return len(self.data)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> bytes:
        return self.data[start:stop]

    def read_into(self, name: str, offset: int, out: memoryview) -> None:
        out[:] = memoryview(self.data)[offset:offset + len(out)]


class KerasCheckpoint(Checkpoint):
    """An open Keras weights file, with :class:`Checkpoint`'s interface. Use ``open_checkpoint``.

    ``kind``: ``"keras"`` (a ``.keras`` archive), ``"keras3"`` (a ``.weights.h5``) or ``"keras2"``;
    ``aliases``: every other accepted name (stored HDF5 paths) -> the listed name.

    Example::

        ckpt = open_checkpoint("m.weights.h5", keras_config="config.json")
        ckpt.read("stem_bn/moving_mean")
    """

    def __init__(self, store: Store, name: str, keras_config: Any = None):
        self.store = store
        self.file = self.prefix = name
        self.path = store.describe(name)
        self.stats = ReadStats()
        self._infos: dict[str, TensorInfo] = {}
        self._lock = threading.Lock()
        config, member = None, ""
        if name.endswith(".weights.json"):  # sharded save_weights: a manifest naming sibling .h5 files
            self.kind = "keras3"
            windows = [(store, shard, 0, _file_size(store, shard, store.describe(shard)))
                       for shard in _shard_files(store, name, self.path)]
            member = f"{len(windows)} files"
        else:
            size = _file_size(store, name, self.path)
            if store.read(name, 0, min(size, 4)) == b"PK\x03\x04":
                self.kind = "keras"
                h5_store, h5_name, start, length, config, member = self._open_archive(size)
                windows = [(h5_store, h5_name, start, length)]
            else:
                self.kind = "keras3"
                windows = [(store, name, 0, size)]
        if keras_config is not None:
            config = load_keras_config(keras_config)
        self.num_shards = len(windows)
        self._h5s: list[OpenHDF5] = []
        try:
            for h5_store, h5_name, start, length in windows:
                remote = h5_store.size(h5_name) is None  # each read a request: metadata read in blocks
                where = self.path if len(windows) == 1 else h5_store.describe(h5_name)
                self._h5s.append(open_hdf5(h5_store, h5_name, start, length, where, self.stats,
                                           REMOTE_BLOCK_BYTES if remote else 0))
            self._open_tree(config)
        except BaseException:
            self.close()
            raise
        self.opened = self._describe(member, keras_config)

    # ---- opening -----------------------------------------------------------------------------
    def _open_archive(self, size: int) -> tuple[Store, str, int, int, Any, str]:
        """The weights member's place (in place when stored, else decompressed) and the parsed config."""
        zip_file = WindowFile(self.store, self.file, 0, size, self.stats)
        try:
            archive = zipfile.ZipFile(zip_file)
            names = archive.namelist()
            if WEIGHTS_MEMBER not in names:
                sharded = any(n.endswith(".weights.json") for n in names)
                raise UnsupportedFormatError(
                    f"{self.path}: a zip archive with no {WEIGHTS_MEMBER}"
                    + ("; its weights are sharded (model.weights.json), which tf2flax does not read yet"
                       if sharded else f", so not a Keras .keras file; {READS}"))
            info = archive.getinfo(WEIGHTS_MEMBER)
            config = _archive_config(archive, self.path) if CONFIG_MEMBER in names else None
            if info.flag_bits & 1:
                raise UnsupportedFormatError(f"{self.path}: {WEIGHTS_MEMBER} is encrypted")
            if info.compress_type == zipfile.ZIP_STORED:
                header = self.store.read(self.file, info.header_offset, info.header_offset + _ZIP_LOCAL_HEADER.size)
                signature, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(header)
                start = info.header_offset + _ZIP_LOCAL_HEADER.size + name_length + extra_length
                if signature != b"PK\x03\x04" or start + info.file_size > size:
                    raise CorruptCheckpointError(f"{self.path}: {WEIGHTS_MEMBER}'s entry does not fit in the archive")
                return self.store, self.file, start, info.file_size, config, "read in place"
            if info.file_size > min(MAX_INFLATED_BYTES, MAX_INFLATION * max(info.compress_size, 1 << 20)):
                raise UnsupportedFormatError(
                    f"{self.path}: {WEIGHTS_MEMBER} is compressed ({info.compress_size} bytes, {info.file_size} once "
                    f"inflated), more than tf2flax decompresses in memory (up to {MAX_INFLATED_BYTES} bytes, "
                    f"{MAX_INFLATION}x); Keras stores it uncompressed: unzip the archive and open "
                    "model.weights.h5 with keras_config=config.json")
            data = archive.read(WEIGHTS_MEMBER)  # zipfile stops at the declared size and checks the CRC
            shown = f"{self.path}[{WEIGHTS_MEMBER}]"
            return MemoryStore(WEIGHTS_MEMBER, data, shown), WEIGHTS_MEMBER, 0, len(data), config, "decompressed"
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError,
                RuntimeError, struct.error, KeyError) as e:
            if isinstance(e, (UnsupportedFormatError, CorruptCheckpointError)):
                raise
            raise CorruptCheckpointError(f"{self.path}: not a readable .keras (zip) archive ({short_error(e)})") \
                from None

    def _open_tree(self, config: Any) -> None:
        groups: list[str] = []
        found: dict[str, Any] = {}
        self._shard_of: dict[str, int] = {}
        for shard, h5 in enumerate(self._h5s):
            here = datasets(h5.file, h5.size, self.path if len(self._h5s) == 1 else h5.window.store.describe(
                h5.window.name), groups)
            for path in here:
                if path in found:
                    raise CorruptCheckpointError(f"{self.path}: dataset {clip(path)} is in two of its shard files")
                self._shard_of[path] = shard
            found.update(here)
        self._datasets = found
        group_set = set(groups)
        names: dict[str, str] = {}  # listed name -> dataset path
        h5 = self._h5s[0].file
        if len(self._h5s) == 1 and ("model_weights" in group_set or _has_attribute(h5, "layer_names")):
            self.kind = "keras2" if self.kind != "keras" else self.kind
            self.full_model = "model_weights" in group_set
            names = self._keras2_names(found)
        elif any(g == "layers" or g == "vars" or g.endswith("/vars") or g == "_layer_checkpoint_dependencies"
                 for g in groups) or any(_VARS.match(p) for p in found):
            derived = keras3_names(config, self._groups(found, group_set)) if isinstance(config, Mapping) else {}
            counts: dict[str, int] = {}
            for stored in derived.values():
                counts[stored] = counts.get(stored, 0) + 1
            for path in found:
                name = derived.get(path, path)
                names[name if counts.get(name, 0) <= 1 and name not in found else path] = path
        else:
            raise UnsupportedFormatError(
                f"{self.path}: an HDF5 file with no Keras weights layout (no layers/, vars/ or model_weights "
                f"groups, no layer_names attribute); {READS}")
        self.names = sorted(names)
        self.aliases = {path: name for name, path in names.items() if path != name}
        self._entries = {**names, **{path: path for path in self.aliases}}

    @staticmethod
    def _groups(found: Mapping[str, Any], groups: set[str]) -> dict[str, int]:
        """Layer group (the parent of a ``vars`` group) -> how many variables it holds.

        Keras also stores each layer's name, as a ``name`` attribute: a variable-length string, kept in
        HDF5's global heap, where a damaged file hung or crashed the HDF5 library while fuzzing. tf2flax
        reads no string attribute; layers are matched by their groups' names instead.
        """
        counts: dict[str, int] = {}
        for path in found:
            match = _VARS.match(path)
            if match:
                counts[match.group(1) or ""] = counts.get(match.group(1) or "", 0) + 1
        return {group: counts.get(group, 0) for group in groups | {""}
                if (f"{group}/vars" if group else "vars") in groups}

    def _keras2_names(self, found: Mapping[str, Any]) -> dict[str, str]:
        """Each dataset ``[model_weights/]<layer>/<weight>:0`` named as Keras names the weight (see
        ``keras2_names``); optimizer weights (``optimizer_weights/<weight>``) under ``optimizer/``. Read
        from the group tree, which holds the same names as the ``layer_names``/``weight_names``
        attributes (string attributes are not read)."""
        prefix = "model_weights/" if self.full_model else ""
        weights = {path: tuple(path[len(prefix):].split("/", 1)) for path in found
                   if path.startswith(prefix) and not path.startswith("optimizer_weights/")
                   and "/" in path[len(prefix):]}
        by_path = keras2_names(weights)
        for path in found:
            if path.startswith("optimizer_weights/"):
                by_path[path] = "optimizer/" + keras2_weight(path[len("optimizer_weights/"):])
        names: dict[str, str] = {}
        for path in found:  # datasets outside the layout, and any name still taken, keep their stored paths
            name = by_path.get(path, path)
            names[name if name not in names and name not in found else path] = path
        return names

    def _describe(self, member: str, keras_config: Any) -> str:
        if self.kind == "keras":
            return f"Keras 3 .keras archive: {self.path} ({WEIGHTS_MEMBER} {member})"
        if self.kind == "keras2":
            what = "full model" if self.full_model else "weights only"
            return f"Keras HDF5 file (Keras 2 layout, {what}): {self.path}"
        names = " with Keras names from keras_config" if keras_config is not None else ""
        if self.file.endswith(".weights.json"):
            return f"Keras 3 sharded weights (.weights.json, {member}){names}: {self.path}"
        return f"Keras 3 weights file (.weights.h5){names}: {self.path}"

    # ---- metadata ----------------------------------------------------------------------------
    def _decode_info(self, name: str) -> TensorInfo:
        path = self._entries[name]
        ds = self._datasets[path]
        here = f"{self.path}: tensor {clip(name)}"
        try:
            dtype = _numpy_dtype(ds, here)
            offset = ds.id.get_offset() or 0
        except (OSError, RuntimeError, ValueError, TypeError) as e:
            raise CorruptCheckpointError(f"{here}: its type cannot be read ({short_error(e)})") from None
        shape = tuple(int(d) for d in (ds.shape or ()))
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        enum = _ENUMS[dtype]
        shard = self._shard_of[path]
        return TensorInfo(name, dtype, enum, shape, StoredTensor(enum, shape, shard, offset, nbytes, 0))

    def list_variables(self) -> list[tuple[str, list[int]]]:
        """[(name, shape)] sorted by name, from the HDF5 metadata (no tensor data read)."""
        return [(n, list(self._datasets[self._entries[n]].shape or ())) for n in self.names]

    # ---- reading -----------------------------------------------------------------------------
    def read(self, name: str, index: Any = None) -> np.ndarray:
        """Tensor ``name``, or the region ``index`` of it: an HDF5 hyperslab, so only that region's bytes
        (for chunked datasets, the chunks it touches) are read."""
        info = self.info(name)
        region, squeeze = self._region(info, index)
        ds = self._datasets[self._entries[name]]
        try:
            with self._lock:
                raw = ds[region] if info.shape else ds[()]
        except (OSError, RuntimeError, ValueError, TypeError) as e:
            raise CorruptCheckpointError(f"{self.path}: tensor {clip(name)} cannot be read ({short_error(e)})") \
                from None
        array = np.asarray(raw)
        array = array.view(info.dtype) if array.dtype.kind == "V" else array.astype(info.dtype, copy=False)
        return squeezed(array.reshape(tuple(s.stop - s.start for s in region)), squeeze)

    def close(self) -> None:
        for h5 in getattr(self, "_h5s", []):
            h5.close()
        super().close()


def _has_attribute(obj: Any, key: str) -> bool:
    """Whether HDF5 object ``obj`` has attribute ``key`` (its value is not read)."""
    try:
        return key in obj.attrs
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise CorruptCheckpointError(f"{obj.file.filename}: attributes cannot be listed ({short_error(e)})") from None


def _numpy_dtype(ds: Any, here: str) -> np.dtype:
    import h5py

    stored = ds.dtype
    if h5py.check_vlen_dtype(stored) is not None or h5py.check_string_dtype(stored) is not None:
        raise UnsupportedFormatError(f"{here}: HDF5 type {stored} holds strings or variable-length data, which "
                                     "tf2flax does not read (Keras weights are numbers)")
    if stored.kind == "V" and stored.itemsize == 2 and not stored.names:
        # How Keras saves bfloat16: 2-byte opaque data (Keras 3 marks it dtype="bfloat16"; its legacy .h5
        # writer does not); no other Keras dtype is stored so.
        return np.dtype(ml_dtypes.bfloat16)
    native = stored.newbyteorder("=") if stored.kind in "fiucb" else None
    if native is None or native not in _ENUMS:
        raise UnsupportedFormatError(f"{here}: HDF5 type {stored} is not a numeric type tf2flax reads")
    return native


def _shard_files(store: Store, name: str, where: str) -> list[str]:
    """The shard files a ``.weights.json`` manifest names (its ``weight_map`` values), each a plain file
    name beside it: nothing outside the manifest's directory is read because the manifest says so."""
    size = store.size(name)
    if size is not None and size > MAX_CONFIG_BYTES:
        raise CorruptCheckpointError(f"{where}: {size} bytes, too large for a weights manifest")
    manifest = _parse_config(store.read(name), where)
    weight_map = manifest.get("weight_map") if isinstance(manifest, Mapping) else None
    if not isinstance(weight_map, Mapping):
        raise CorruptCheckpointError(f"{where}: a .weights.json without a weight_map")
    files: dict[str, None] = {}
    for value in weight_map.values():
        for shard in value if isinstance(value, list) else [value]:
            if not isinstance(shard, str) or not re.fullmatch(r"[\w][\w.-]*", shard) or ".." in shard:
                raise CorruptCheckpointError(f"{where}: shard {clip(str(shard))} is not a file name beside it")
            files[shard] = None
    if not files:
        raise CorruptCheckpointError(f"{where}: its weight_map names no shard file")
    for shard in files:
        if not store.exists(shard):
            raise CheckpointNotFoundError(f"{store.describe(shard)}: missing; the sharded weights {where} name it")
    return list(files)


def _file_size(store: Store, name: str, where: str) -> int:
    """The file's size: from the store, or (remote files, whose size a store does not give cheaply)
    from the file itself: a zip's end-of-central-directory record, an HDF5 superblock's end address."""
    size = store.size(name)
    if size is not None:
        return size
    head = store.read(name, 0, 64)
    if head.startswith(b"PK"):
        size = _zip_size(store, name, where)
    elif head.startswith(b"\x89HDF\r\n\x1a\n"):
        size = _hdf5_size(head, where)
    else:
        raise CorruptCheckpointError(f"{where}: neither a zip nor an HDF5 file")
    if size < len(head) or len(store.read(name, size - 1, size)) != 1:
        raise CorruptCheckpointError(f"{where}: declares {size} bytes, which it does not hold")
    return size


def _zip_size(store: Store, name: str, where: str) -> int:
    tail = store.read(name, -22)  # the end of central directory record (Keras writes no archive comment)
    if len(tail) != 22 or not tail.startswith(b"PK\x05\x06"):
        raise UnsupportedFormatError(f"{where}: a zip archive with a comment or damaged end; remote .keras files "
                                     "are read when they end as Keras writes them")
    directory_size, directory_offset = struct.unpack("<II", tail[12:20])
    if directory_offset != 0xFFFFFFFF:
        return directory_offset + directory_size + 22
    locator = store.read(name, -42)[:20]  # zip64: its locator, then its end record
    if not locator.startswith(b"PK\x06\x07"):
        raise CorruptCheckpointError(f"{where}: a zip64 archive without its end record locator")
    record_at = struct.unpack("<Q", locator[8:16])[0]
    record = store.read(name, record_at, record_at + 12)
    if not record.startswith(b"PK\x06\x06"):
        raise CorruptCheckpointError(f"{where}: zip64 end record not where its locator says")
    return record_at + 12 + struct.unpack("<Q", record[4:12])[0] + 20 + 22


def _hdf5_size(head: bytes, where: str) -> int:
    version = head[8]
    if version in (0, 1):
        offsets, at = head[13], 24 if version == 0 else 28
        base, end = at, at + 2 * offsets
    elif version in (2, 3):
        offsets = head[9]
        base, end = 12, 12 + 2 * offsets
    else:
        raise UnsupportedFormatError(f"{where}: HDF5 superblock version {version}")
    if offsets not in (2, 4, 8) or end + offsets > len(head):
        raise CorruptCheckpointError(f"{where}: HDF5 superblock declares {offsets}-byte addresses")
    return int.from_bytes(head[base:base + offsets], "little") + int.from_bytes(head[end:end + offsets], "little")


def _archive_config(archive: zipfile.ZipFile, where: str) -> Any:
    info = archive.getinfo(CONFIG_MEMBER)
    if info.file_size > MAX_CONFIG_BYTES:
        raise CorruptCheckpointError(f"{where}: {CONFIG_MEMBER} declares {info.file_size} bytes")
    return _parse_config(archive.read(CONFIG_MEMBER), f"{where}[{CONFIG_MEMBER}]")


def _parse_config(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CorruptCheckpointError(f"{where}: not a JSON model config ({short_error(e)})") from None


def load_keras_config(source: Any) -> Any:
    """A Keras model config: a dict as given, or read from a ``config.json`` or a ``.keras`` archive.

    Example::

        load_keras_config("model.keras")["class_name"]       # 'Functional'
    """
    if isinstance(source, Mapping):
        return source
    path = os.fspath(source)
    store, name = open_store(path)
    size = store.size(name)
    if isinstance(store, LocalStore) and not store.exists(name):
        raise UnsupportedFormatError(f"{store.describe(name)}: keras_config not found")
    if store.read(name, 0, 4) == b"PK\x03\x04":
        size = _file_size(store, name, store.describe(name))
        try:
            with zipfile.ZipFile(WindowFile(store, name, 0, size)) as archive:
                return _archive_config(archive, store.describe(name))
        except (zipfile.BadZipFile, KeyError, OSError, ValueError, EOFError) as e:
            raise CorruptCheckpointError(
                f"{store.describe(name)}: not a .keras archive with a {CONFIG_MEMBER} ({short_error(e)})") from None
    if size is not None and size > MAX_CONFIG_BYTES:
        raise CorruptCheckpointError(f"{store.describe(name)}: {size} bytes, too large for a model config")
    return _parse_config(store.read(name), store.describe(name))
