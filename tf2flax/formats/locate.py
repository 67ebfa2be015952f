"""Finding a checkpoint from what the user gave: a directory, a prefix, a file, a URL.

What is found:

- a V2 checkpoint (``prefix.index`` + ``prefix.data-*``), named by prefix, by one of its files, or by a
  directory whose ``checkpoint`` state file names it (as TensorFlow's ``latest_checkpoint``);
- a SavedModel or TF Hub module directory (``saved_model.pb``/``.pbtxt``, ``tfhub_module.pb``, or
  just ``variables/variables.index``): its ``variables/variables`` checkpoint; a TF Serving base
  directory of numbered versions: the highest version's;
- a V1 checkpoint: one table file named exactly the prefix, or shards ``name-00000-of-00002``... (a
  state file names them ``name-?????-of-00002``);
- a Keras file (a zip or HDF5 file: ``.keras``, ``.weights.h5``, ``.h5``), opened by ``keras.py``.

The directory you name is the directory you read: TF1's ``Saver`` writes absolute paths into the state
file; when the named directory holds the checkpoint under the same file name (a moved or copied run),
that copy is read, with a warning that the state file names another place.

Telling what a file is reads its first 8 and last 48 bytes only, never the whole file.

Example::

    where = locate("/runs/bert")       # Location(store=LocalStore('/runs/bert'), prefix='model.ckpt-1000', ...)
    where.describe()                   # 'V2 checkpoint: /runs/bert/model.ckpt-1000'
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import warnings

from google.protobuf import text_format

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, UnsupportedFormatError
from ..storage import LocalStore, Store, is_url, open_store, redact_url
from .protos import CheckpointState
from .table import FOOTER_SIZE, is_table_footer

STATE_FILE = "checkpoint"
#: Bytes a ``checkpoint`` state file may have (TensorFlow's hold one line per kept checkpoint).
STATE_FILE_LIMIT = 1 << 20
SAVED_MODEL_FILES = ("tfhub_module.pb", "saved_model.pb", "saved_model.pbtxt")  # a Hub module has both
_SUFFIX = re.compile(r"\.(index|meta|data-\d{5}-of-\d{5})$")
_V1_SHARD = re.compile(r"-(\d{5}|\?{5})-of-(\d{5})$")
_ZIP, _HDF5 = b"PK\x03\x04", b"\x89HDF\r\n\x1a\n"


class LocationWarning(UserWarning):
    """The checkpoint read is not where the state file says (a moved or copied directory)."""


@dataclasses.dataclass(frozen=True)
class Location:
    """Where a checkpoint is: its directory's store, its prefix, its format, what the user named.

    ``files``: for V1, the table files in shard order (``prefix`` is then the name or the pattern).
    ``container``: "SavedModel" or "TF Hub module" when the user named one, else "".
    """

    store: Store
    prefix: str
    format: str = "v2"
    files: tuple[str, ...] = ()
    container: str = ""

    def describe(self) -> str:
        """One line for ``ls``: what was opened, e.g. ``SavedModel variables: /m/variables/variables``."""
        where = self.store.describe(self.prefix)
        if self.container:
            return f"{self.container} variables: {where}"
        if self.format == "keras":
            return f"Keras file: {where}"
        if self.format == "v1":
            where = describe_v1(self.store, self.prefix, self.files)
            return f"V1 checkpoint: {where}" + (f" ({len(self.files)} files)" if len(self.files) > 1 else "")
        return f"V2 checkpoint: {where}"


def describe_v1(store: Store, prefix: str, files: tuple[str, ...]) -> str:
    """A V1 checkpoint's name for messages: its pattern (``model-?????-of-00002``), or for URLs, where
    ``?`` starts a query string, its first file."""
    return store.describe(files[0] if "?" in prefix and is_url(store.location) else prefix)


def read_bounded(store: Store, name: str, limit: int) -> bytes:
    """The whole of file ``name``, which must be at most ``limit`` bytes: a larger one is refused
    having read no more than ``limit + 1`` bytes (a URL's size is not known in advance, so a
    range of ``limit + 1`` bytes is asked first; only a shorter file is then read whole).

    Example::

        text = read_bounded(store, "checkpoint", STATE_FILE_LIMIT)
    """
    size = store.size(name)
    if size is None:
        try:
            store.read(name, 0, limit + 1)
        except CorruptCheckpointError:  # shorter than the range: small enough to read whole
            data = store.read(name)
            if len(data) <= limit:
                return data
        size = limit + 1
    if size > limit:
        raise CorruptCheckpointError(f"{store.describe(name)}: larger than {limit} bytes; not a checkpoint state file "
                                     "(TensorFlow's are a few hundred bytes)")
    return store.read(name, 0, size)


def _parse_state(store: Store) -> list[str]:
    """The checkpoint paths a state file names, latest first. A file that does not parse is
    described by line and column only: its contents (a symlinked secret, say) are never shown."""
    where = store.describe(STATE_FILE)
    data = read_bounded(store, STATE_FILE, STATE_FILE_LIMIT)
    state = CheckpointState()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptCheckpointError(f"{where}: not a valid checkpoint state file: not UTF-8 text (byte {e.start})") from None
    try:
        text_format.Parse(text, state, allow_unknown_field=True)
    except text_format.ParseError as e:
        at = f" at line {e.GetLine()}, column {e.GetColumn()}" if e.GetLine() is not None else ""
        raise CorruptCheckpointError(f"{where}: not a valid checkpoint state file: does not parse{at}") from None
    except RecursionError:
        raise CorruptCheckpointError(f"{where}: not a valid checkpoint state file: nested too deeply") from None
    paths = [state.model_checkpoint_path] if state.model_checkpoint_path else []
    return paths + [p for p in reversed(state.all_model_checkpoint_paths) if p not in paths]


def _tail(store: Store, name: str) -> bytes:
    """The last 48 bytes of ``name`` (fewer if it is shorter), whatever its size."""
    size = store.size(name)
    if size is None:  # a URL: a suffix range
        try:
            return store.read(name, -FOOTER_SIZE)
        except CorruptCheckpointError:  # shorter than the range
            return b""
    return store.read(name, size - FOOTER_SIZE, size) if size >= FOOTER_SIZE else b""


def ends_like_a_table(store: Store, name: str) -> bool:
    """Whether file ``name`` ends in a table footer: a check of 48 bytes before reading a large index."""
    return is_table_footer(_tail(store, name))


def _sniff(store: Store, name: str) -> str:
    """What file ``name`` is, from its first 8 and last 48 bytes: "table", "zip", "hdf5" or "other"."""
    try:
        head = store.read(name, 0, 8)
    except CorruptCheckpointError:  # shorter than 8 bytes
        return "other"
    if head.startswith(_ZIP):
        return "zip"
    if head.startswith(_HDF5):
        return "hdf5"
    return "table" if ends_like_a_table(store, name) else "other"


def _v1_files(store: Store, prefix: str) -> tuple[str, ...] | None:
    """The files of a V1 checkpoint at ``prefix`` (a file, or ``name-?????-of-NNNNN``), or None."""
    shard = _V1_SHARD.search(prefix)
    if shard is not None:
        count = int(shard.group(2))
        names = tuple(f"{prefix[:shard.start()]}-{i:05d}-of-{count:05d}" for i in range(count))
        present = [n for n in names if store.exists(n)]
        if not present or _sniff(store, present[0]) != "table":
            return None
        missing = [n for n in names if n not in present]
        if missing:
            raise CheckpointNotFoundError(
                f"{store.describe(missing[0])}: missing; the V1 checkpoint {store.describe(prefix)} has "
                f"{count} files and {len(missing)} of them are not there")
        return names
    if store.exists(prefix) and _sniff(store, prefix) == "table":
        return (prefix,)
    return None


def _checkpoint_at(store: Store, prefix: str) -> Location | None:
    """The V2 or V1 checkpoint at ``prefix`` in ``store``, or None."""
    if store.exists(prefix + ".index"):
        return Location(store, prefix)
    files = _v1_files(store, prefix)
    if files is not None:
        shard = _V1_SHARD.search(prefix)
        pattern = prefix[:shard.start()] + f"-?????-of-{shard.group(2)}" if shard and len(files) > 1 else prefix
        return Location(store, pattern, "v1", files)
    return None


def _same_place(store: Store, path: str) -> bool:
    if is_url(path):
        return posixpath.dirname(path).rstrip("/") == store.location.rstrip("/")
    return isinstance(store, LocalStore) and os.path.realpath(os.path.dirname(path)) == os.path.realpath(store.location)


def _store_of(path: str) -> tuple[str, str]:
    """(scheme, authority) of a URL, ("", "") of a local path: what a state file may point within."""
    if not is_url(path):
        return "", ""
    scheme, _, rest = path.partition("://")
    return scheme.lower(), rest.split("/", 1)[0].rsplit("@", 1)[-1].lower()  # credentials aside


def _same_store(directory: str, path: str) -> bool:
    """Whether a state file in ``directory`` may send us to ``path``: a local one to local paths, a
    URL one to the same scheme and host or bucket (``file://`` URLs are local)."""
    here, there = _store_of(directory), _store_of(path)
    local = ("", ""), ("file", "")
    return there == here or (here in local and there in local)


def _from_state_file(store: Store, directory: str) -> Location:
    paths = _parse_state(store)
    if not paths:
        raise CheckpointNotFoundError(f"{store.describe(STATE_FILE)} names no checkpoint")
    latest = paths[0]
    if not _is_absolute(latest):
        candidates = [(store, latest)]
    else:
        base = posixpath.basename(latest) if is_url(latest) else os.path.basename(latest)
        # A path in another store (a local path in a state file read from a URL, written on another
        # machine, or another host, bucket or scheme) is not followed: only its copy here is read.
        foreign = not _same_store(directory, latest)
        here = _checkpoint_at(store, base)
        if here is not None:
            if not foreign and not _same_place(store, latest):
                warnings.warn(f"{store.describe(STATE_FILE)} names {redact_url(repr(latest))}; reading the copy in the directory you "
                              f"named, {store.describe(base)}", LocationWarning, stacklevel=5)
            return here
        candidates = [] if foreign else [open_store(latest)]
        candidates.append((store, base))
    for candidate_store, prefix in candidates:
        found = _checkpoint_at(candidate_store, prefix)
        if found is not None:
            return found
    raise CheckpointNotFoundError(
        f"{store.describe(STATE_FILE)} points to {redact_url(repr(latest))}, but neither it nor "
        f"{store.describe(candidates[-1][1])} has an .index file")


def _saved_model(store: Store, directory: str) -> Location | None:
    """The variables checkpoint of a SavedModel or TF Hub module directory, or None if it is neither."""
    marker = next((f for f in SAVED_MODEL_FILES if store.exists(f)), None)
    variables, _ = open_store(directory.rstrip("/") + "/variables/variables")
    if variables.exists("variables.index"):
        container = "TF Hub module" if marker == "tfhub_module.pb" else "SavedModel"
        return Location(variables, "variables", container=container)
    if marker is not None:
        raise CheckpointNotFoundError(
            f"{store.describe(marker)}: a {'TF Hub module' if marker == 'tfhub_module.pb' else 'SavedModel'} "
            f"with no variables ({store.describe('variables/variables.index')} is missing): its weights, if any, "
            "are constants in the graph, which tf2flax does not read; tf2flax reads the variables checkpoint "
            "(variables/variables) of a SavedModel")
    return None


def _latest_version(store: Store) -> str | None:
    """TF Serving's layout: a base directory of numbered SavedModel versions; the highest, as Serving picks."""
    if not isinstance(store, LocalStore):
        return None
    versions = [d for d in os.listdir(store.location) if d.isascii() and d.isdigit()  # not '²', which int() refuses
                and any(os.path.isfile(os.path.join(store.location, d, f)) for f in SAVED_MODEL_FILES)]
    # Compared as digit strings (shorter is smaller, once leading zeros go): int() refuses 4,300+ digits.
    return os.path.join(store.location, max(versions, key=lambda d: (len(d.lstrip("0")), d.lstrip("0")))) if versions else None


def _from_directory(store: Store, directory: str) -> Location:
    if store.exists(STATE_FILE):
        return _from_state_file(store, directory)
    saved = _saved_model(store, directory)
    if saved is not None:
        return saved
    if store.exists("variables.index"):  # a SavedModel's variables/ directory itself
        return Location(store, "variables")
    version = _latest_version(store)
    if version is not None:
        return _from_directory(_directory_store(version), version)
    if isinstance(store, LocalStore):
        indexes = sorted(f[: -len(".index")] for f in os.listdir(store.location) if f.endswith(".index"))
        if len(indexes) == 1:
            return Location(store, indexes[0])
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


def _directory_store(path: str) -> Store:
    return open_store(path.rstrip("/") + "/" + STATE_FILE)[0]


def locate(path: str | os.PathLike) -> Location:
    """Resolve ``path`` (directory, prefix, file or URL) to the checkpoint it names.

    Example::

        locate("gs://bucket/hub/").describe()   # 'TF Hub module variables: gs://bucket/hub/variables/variables'
    """
    path = os.fspath(path)
    if _is_directory(path):
        return _from_directory(_directory_store(path), path)
    parent, _, base = path.rstrip("/").rpartition("/")
    if base in SAVED_MODEL_FILES:  # the SavedModel's own file: open the SavedModel
        return _from_directory(_directory_store(parent or "."), parent or ".")
    path = _SUFFIX.sub("", path)
    store, prefix = open_store(path)
    found = _checkpoint_at(store, prefix)
    if found is not None:
        return found
    if is_url(path):  # a directory URL without its trailing slash
        directory = _directory_store(path)
        if directory.exists(STATE_FILE) or any(directory.exists(f) for f in SAVED_MODEL_FILES):
            return _from_directory(directory, path)
    if store.exists(prefix):
        # Keras files (and files that only look like them: the Keras reader says what they are)
        if _sniff(store, prefix) in ("zip", "hdf5") or prefix.endswith(".weights.json"):
            return Location(store, prefix, "keras")
        _refuse(store, prefix)
    shown = redact_url(path)
    raise CheckpointNotFoundError(f"{shown}: no checkpoint here (expected {shown}.index, or a directory)")


_INSTEAD = ("tf2flax reads TensorFlow checkpoints (prefix.index + prefix.data-* files, or V1 checkpoint files), "
            "SavedModel directories and Keras .keras, .weights.h5 and .h5 files")


def _refuse(store: Store, name: str) -> None:
    """Say what the file ``name`` is, when it is not a checkpoint (reads its first and last bytes)."""
    where = store.describe(name)
    if name.endswith(".pb"):
        raise UnsupportedFormatError(
            f"{where}: a .pb protobuf (a frozen graph holds its weights as graph constants), not a checkpoint; "
            f"{_INSTEAD}: point at the SavedModel directory or the checkpoint the graph was frozen from")
    raise CheckpointNotFoundError(f"{where}: not a TensorFlow checkpoint (no .index file); {_INSTEAD}")
