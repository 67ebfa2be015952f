"""The output directory of a conversion: checked before any work, installed atomically at the end.

Nothing is lost: an OUT that is or holds the checkpoint being converted, or the current directory, is
refused; ``force`` replaces only an empty directory or an Orbax checkpoint tf2flax wrote (its
``_CHECKPOINT_METADATA`` says so, and every file in it, at any depth, is one a conversion writes),
and only once the new one is complete.

Example::

    out = check_out("/ckpts/bert", force=False, inputs=checkpoint_files(ckpt))
    install(tmp, out, force=False)                  # rename the finished temporary directory
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import OutputExistsError, StorageError, Tf2FlaxError, clip, option, spoken
from ..storage import LocalStore, redact_url

# What Orbax writes at the top of a checkpoint, besides one directory (holding _METADATA) per item.
ORBAX_FILES = ("_CHECKPOINT_METADATA", "orbax.checkpoint", "commit_success.txt")
_METADATA_MAX_BYTES = 1 << 20


def checkpoint_files(ckpt: Any) -> list[str]:
    """Where an open checkpoint's files are: its local prefix (the index and data files, or a V1
    file, lie beside it); nothing for a remote one."""
    if not isinstance(getattr(ckpt, "store", None), LocalStore):
        return []
    return [ckpt.store.describe(ckpt.prefix)]


def check_out(out: str | os.PathLike, force: bool, *, dry_run: bool = False, inputs: Iterable[str] = ()) -> Path:
    """``out`` (a local path: URLs are refused before, by ``check_output_url``) as an absolute path,
    once it is safe to write (``dry_run``: no check).

    Refused: an existing ``out`` (even a dangling symbolic link) unless ``force``; an ``out``
    that is or holds one of ``inputs`` or the current directory; with ``force``, an ``out`` that is not
    an empty directory or an Orbax checkpoint written by tf2flax.
    """
    path = Path(os.path.abspath(out))
    if dry_run:
        return path
    if not (path.exists() or path.is_symlink()):
        blocked = parent_problem(path)
        if blocked:
            raise StorageError(f"{path}: cannot create its directory {path.parent}: {blocked}")
        return path
    for what, held in [*(("the checkpoint being converted", p) for p in inputs), ("the current directory", ".")]:
        if _holds(path, held):
            raise OutputExistsError(f"{path} is or holds {what} ({os.path.abspath(held)}); "
                                  f"choose another {spoken('output path', 'OUT')}")
    if path.is_symlink() and not path.exists():
        raise OutputExistsError(f"{path} is a symbolic link to {clip(os.readlink(path))}, which does not exist; "
                                f"remove the link or choose another {spoken('output path', 'OUT')}")
    if not force:
        raise OutputExistsError(f"{path} already exists; use {option('force')} to replace it")
    check_replaceable(path)
    return path


def parent_problem(out: Path) -> str | None:
    """Why the directories above ``out`` cannot be created or written (the nearest existing one is a
    file, a dangling symbolic link or read-only), or None if they can (missing ones are created)."""
    nearest = out.parent
    while not os.path.lexists(nearest) and nearest != nearest.parent:
        nearest = nearest.parent
    if nearest.is_dir():
        return None if os.access(nearest, os.W_OK | os.X_OK) else f"{nearest} is not writable"
    if nearest.is_symlink():
        return f"{nearest} is a symbolic link to {clip(os.readlink(nearest))}, which does not exist"
    return f"{nearest} is a file, not a directory"


def write_error(out: Path, tmp: Path, error: BaseException) -> StorageError | None:
    """The error to raise for ``error``, met while writing ``out`` through the temporary ``tmp``: one
    naming ``out`` (never ``tmp``) and, when that is the cause, the directory above it that is gone or
    in the way; None when ``error`` is not about the output (it is raised as it is)."""
    if isinstance(error, Tf2FlaxError) or not isinstance(error, Exception):
        return None
    missing = next((p for p in reversed(out.parents) if not p.is_dir()), None)
    if missing is not None:
        why = parent_problem(out) or f"its directory {missing} does not exist (removed while converting?)"
    elif str(tmp) in f"{error} {getattr(error, 'filename', '')}":
        why = getattr(error, "strerror", None) or " ".join(str(error).replace(str(tmp), str(out)).split())[:300]
    else:
        return None
    return StorageError(f"{out}: writing the output failed: {why}")


def leftovers_note(out: Path) -> str | None:
    """A line naming the temporary directories beside ``out`` that a conversion to ``out`` writes
    (``OUT.tmp-<hex>``, and Orbax's ``.partial_save`` of it), left by an interrupted or killed one or
    by one running now; None when there are none."""
    pattern = re.compile(re.escape(out.name) + r"\.tmp-[0-9a-f]{8}(\.partial_save)?")
    left = sorted(str(p) for p in out.parent.glob(glob.escape(out.name) + ".tmp-*") if pattern.fullmatch(p.name))
    if not left:
        return None
    many = len(left) > 1
    return (f"{len(left)} temporary director{'ies' if many else 'y'} beside the output, from an interrupted (or a "
            f"running) conversion: {', '.join(left[:3])}{' ...' if len(left) > 3 else ''}; remove "
            f"{'them' if many else 'it'} if no conversion is running")


def _holds(out: Path, inside: str) -> bool:
    """Whether ``inside`` is ``out`` or below it, by the paths as written and as resolved."""
    outs = {os.path.abspath(out), os.path.realpath(out)}
    insides = {os.path.abspath(inside), os.path.realpath(inside)}
    return any(i == o or i.startswith(o.rstrip(os.sep) + os.sep) for o in outs for i in insides)


def check_replaceable(path: Any) -> None:
    """Refuse to replace ``path`` (a local ``Path``, or an ``epath.Path`` on an object store) unless it
    is an empty directory or an Orbax checkpoint tf2flax wrote, every file of which (at any depth) is
    one a conversion writes (:func:`written_by_conversion`); the refusal names the first other file."""
    why = _not_ours(path)
    if why:
        raise OutputExistsError(f"{redact_url(str(path))} {why}; {option('force')} replaces only an empty directory or "
                                "an Orbax checkpoint written by tf2flax: remove it yourself or choose another "
                                f"{spoken('output path', 'OUT')}")


# Every file a conversion writes, relative to OUT: Orbax's top-level files, and in ``state`` (the one
# item a conversion saves) its metadata and OCDBT files (one tree per process in a multi-process save).
_WRITTEN = re.compile(
    r"(?:_CHECKPOINT_METADATA|orbax\.checkpoint|commit_success\.txt)"
    r"|state/(?:_METADATA|_sharding|manifest\.ocdbt|d/[0-9a-f]+|array_metadatas/process_[0-9]+"
    r"|ocdbt\.process_[0-9A-Za-z_]+/(?:manifest\.ocdbt|d/[0-9a-f]+))")


def written_by_conversion(relative: str) -> bool:
    """Whether ``relative`` (a file's ``/``-separated path inside an output) is one a conversion writes.

    Example::

        written_by_conversion("state/d/4ded199239f895572c6740b80fcb2ba6")      # True
        written_by_conversion("state/notes.txt")                               # False
    """
    return _WRITTEN.fullmatch(relative) is not None


def _not_ours(path: Any) -> str | None:
    if isinstance(path, Path) and path.is_symlink():
        return "is a symbolic link"
    if not path.is_dir():
        return "is not a directory"
    names = [child.name for child in path.iterdir()]
    if not names:
        return None
    try:
        with (path / ORBAX_FILES[0]).open("rb") as f:
            meta = json.loads(f.read(_METADATA_MAX_BYTES))
    except (OSError, ValueError):
        return f"has no readable {ORBAX_FILES[0]} (not an Orbax checkpoint)"
    custom = meta.get("custom_metadata") if isinstance(meta, dict) else None
    if not (isinstance(custom, dict) and "tf2flax" in custom):
        return "is an Orbax checkpoint that tf2flax did not write"
    try:
        for relative, kind in _entries(path):
            if kind != "file":
                return f"holds {kind} {clip(relative, 200)}, which a conversion does not write"
            if not written_by_conversion(relative):
                return f"holds {clip(relative, 200)}, a file a conversion does not write"
    except OSError as e:
        return f"cannot be listed to the end ({redact_url(' '.join(str(e).split()))})"
    return None


def _entries(path: Any) -> Iterator[tuple[str, str]]:
    """Every file below ``path`` as ``(relative path, kind)``: ``"file"``, or what else it is (a
    symbolic link, a FIFO...), in sorted order so that the first one named is always the same. A local
    tree is walked without following links."""
    if not isinstance(path, Path):  # an object store: only files, in directories that exist because of them
        top = str(path).split("://", 1)[-1].rstrip("/")
        for root, _, files in path.walk(on_error=_raise):  # (fsspec's roots come without the scheme)
            base = str(root).split("://", 1)[-1].rstrip("/")[len(top):].strip("/")
            for name in sorted(files):
                yield (f"{base}/{name}" if base else name), "file"
        return
    for root, dirs, files in os.walk(path, onerror=_raise):
        base = os.path.relpath(root, path).replace(os.sep, "/")
        dirs.sort()
        for name in sorted([*dirs, *files]):
            full = os.path.join(root, name)
            relative = name if base == "." else f"{base}/{name}"
            if os.path.islink(full):
                yield relative, "a symbolic link"
            elif name in files and not os.path.isfile(full):
                yield relative, "a special file"
            elif name in files:
                yield relative, "file"


def _raise(error: OSError) -> None:
    raise error


def install(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` (``force``, and still replaceable)
    goes only after that."""
    if not out.exists() and not out.is_symlink():
        os.rename(tmp, out)
        return
    if not force:
        raise OutputExistsError(f"{out} appeared while converting; the conversion is discarded")
    check_replaceable(out)
    old = out.with_name(f"{out.name}.old-{secrets.token_hex(4)}")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old)
