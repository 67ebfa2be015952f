"""Finding a checkpoint's prefix from what the user gave: a directory, a prefix, a file, a URL.

Directories resolve through their ``checkpoint`` state file as in TensorFlow's
``latest_checkpoint``, with one addition: TF1 ``Saver`` writes absolute paths, which break when a
directory is moved or copied; when such a path is missing we use the same file name inside the
given directory.

Example::

    store, prefix = locate_checkpoint("/runs/bert")   # (LocalStore('/runs/bert'), 'model.ckpt-1000')
"""

from __future__ import annotations

import os
import posixpath
import re

from google.protobuf import text_format

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, UnsupportedFormatError
from ..storage import LocalStore, Store, is_url, open_store, redact_url
from .protos import CheckpointState

STATE_FILE = "checkpoint"
_SUFFIX = re.compile(r"\.(index|meta|data-\d{5}-of-\d{5})$")


def _parse_state(store: Store) -> list[str]:
    text = store.read(STATE_FILE)
    state = CheckpointState()
    try:
        text_format.Parse(text.decode("utf-8"), state, allow_unknown_field=True)
    except (text_format.ParseError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(f"{store.describe(STATE_FILE)}: not a valid checkpoint state file: {e}") from None
    paths = [state.model_checkpoint_path] if state.model_checkpoint_path else []
    return paths + [p for p in reversed(state.all_model_checkpoint_paths) if p not in paths]


def _from_directory(store: Store, directory: str) -> tuple[Store, str]:
    if store.exists(STATE_FILE):
        paths = _parse_state(store)
        if not paths:
            raise CheckpointNotFoundError(f"{store.describe(STATE_FILE)} names no checkpoint")
        latest = paths[0]
        if _is_absolute(latest):
            base = posixpath.basename(latest) if is_url(latest) else os.path.basename(latest)
            # A local path in a state file read from a URL was written on another machine (TF1's
            # Saver records absolute paths): this machine's file of that name is not the checkpoint.
            elsewhere = [] if is_url(directory) and not is_url(latest) else [open_store(latest)]
            candidates = elsewhere + [(store, base)]
        else:
            candidates = [(store, latest)]
        for candidate_store, prefix in candidates:
            if candidate_store.exists(prefix + ".index"):
                return candidate_store, prefix
        for candidate_store, prefix in candidates:
            v1_file = prefix.replace("?????-of-", "00000-of-")  # sharded V1: model-?????-of-00002
            if candidate_store.exists(v1_file):
                _reject_v1(candidate_store, v1_file)
        raise CheckpointNotFoundError(
            f"{store.describe(STATE_FILE)} points to {redact_url(repr(latest))}, but neither it nor "
            f"{store.describe(candidates[-1][1])} has an .index file")
    if isinstance(store, LocalStore):
        indexes = sorted(f[: -len(".index")] for f in os.listdir(store.location) if f.endswith(".index"))
        if len(indexes) == 1:
            return store, indexes[0]
        if indexes:
            raise CheckpointNotFoundError(
                f"{redact_url(directory)}: no 'checkpoint' state file and several checkpoints "
                f"({', '.join(indexes[:5])}); pass a prefix such as {redact_url(os.path.join(directory, indexes[-1]))}")
    raise CheckpointNotFoundError(
        f"{redact_url(directory)}: no 'checkpoint' state file and no checkpoint in this directory")


def _is_absolute(path: str) -> bool:
    return os.path.isabs(path) or is_url(path)


def _is_directory(path: str) -> bool:
    if is_url(path):  # a bucket or server root (`gs://bucket`, `http://host:8000`) is a directory too
        return path.endswith("/") or "/" not in path.split("://", 1)[1]
    return os.path.isdir(path)


def locate_checkpoint(path: str | os.PathLike) -> tuple[Store, str]:
    """Resolve ``path`` to (store of the checkpoint's directory, prefix file name in it)."""
    path = os.fspath(path)
    if _is_directory(path):
        return _from_directory(open_store(path.rstrip("/") + "/" + STATE_FILE)[0], path)
    path = _SUFFIX.sub("", path)
    store, prefix = open_store(path)
    if store.exists(prefix + ".index"):
        return store, prefix
    if is_url(path) and store.exists(prefix + "/" + STATE_FILE):
        return _from_directory(open_store(path + "/" + STATE_FILE)[0], path)
    if store.exists(prefix):
        _reject_v1(store, prefix)
    shown = redact_url(path)
    raise CheckpointNotFoundError(f"{shown}: no checkpoint here (expected {shown}.index, or a directory)")


def _reject_v1(store: Store, name: str) -> None:
    from .table import parse_table

    try:
        entries = parse_table(store.read(name))
    except ValueError:
        raise CheckpointNotFoundError(f"{store.describe(name)}: not a TensorFlow checkpoint (no .index file)") from None
    if entries and entries[0][0] == b"" and entries[0][1][:1] == b"\x0a":
        raise UnsupportedFormatError(
            f"{store.describe(name)}: this is a V1 checkpoint (a single-file format TensorFlow stopped writing "
            "in 2016). Re-save it in the V2 format with TensorFlow: restore it with tf.compat.v1.train.Saver and "
            "save again with write_version=tf.compat.v1.train.SaverDef.V2.")
    raise CheckpointNotFoundError(f"{store.describe(name)}: a table file, but no .index beside it")
