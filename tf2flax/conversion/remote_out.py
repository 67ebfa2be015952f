"""Output URLs: a conversion written straight to ``gs://`` with Orbax's own GCS protocol; other schemes
refused, with the reason.

On GCS, Orbax writes a checkpoint in place and marks it finished with ``commit_success.txt``, written
last (its ``CommitFileTemporaryPath``): a directory without that file is one Orbax takes for
unfinished (``ocp.utils.is_checkpoint_finalized`` is False, a ``CheckpointManager`` skips it). There
is no local staging copy and no rename. Orbax's partial save, which streams a local conversion group
by group, refuses GCS (its snapshots need a rename), so a ``gs://`` conversion is one Orbax save:
tensors read from a local checkpoint are views of the mapped file (page cache, not process memory),
others (transformed, stacked, or read from a URL) are held in memory until written; under
``jax.distributed`` each process holds only its share. ``s3://`` and every other scheme are refused:
Orbax 0.12's TensorStore specs take them for local paths.

Writing ``gs://`` needs a GCS file system for Orbax's metadata files: ``gcsfs`` (``pip install
'tf2flax[gcs]'``), used even where TensorFlow is installed (see :func:`prefer_gcsfs`), or else
TensorFlow's. ``--force`` first checks that the old checkpoint is one tf2flax
wrote, then deletes its ``commit_success.txt`` and the rest before writing: an object store has no
atomic rename, so unlike a local ``--force`` the old checkpoint is gone before the new one is complete.

Example::

    url = check_output_url("gs://bucket/ckpts/bert", force=False)
    tensors, nbytes = write_orbax_url(plan, url)
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterable

from ..errors import OutputExistsError, StorageError, UnsupportedFormatError, option, spoken
from ..plan import Plan, release_source
from ..progress import ByteProgress, human_bytes
from ..storage import redact_url
from .orbax_writer import Solo, groups, orbax_context, total_bytes
from .out_dir import ORBAX_FILES, check_replaceable
from .signals import signals_between_groups
from .tree import nest

COMMIT_FILE = ORBAX_FILES[2]  # commit_success.txt
_WHY = {
    "s3": "orbax-checkpoint 0.12 cannot write s3:// (its TensorStore specs take s3:// for a local path)",
}


def check_output_url(out: str | os.PathLike, force: bool, *, dry_run: bool = False,
                     inputs: Iterable[str] = ()) -> str:
    """``out`` (a ``gs://`` URL, without a trailing slash) once it is safe to write (``dry_run``: only
    the URL itself is checked); other schemes raise UnsupportedFormatError naming the reason.

    Refused: an output that is or holds one of ``inputs`` (URLs of the checkpoint being converted); an
    existing output unless ``force``, and then unless tf2flax wrote it.
    """
    text = os.fspath(out)
    shown = redact_url(text)
    scheme = text.split("://", 1)[0].lower()
    if scheme != "gs":
        why = _WHY.get(scheme, f"orbax-checkpoint writes gs:// but not {scheme}:// URLs")
        raise UnsupportedFormatError(f"{shown}: cannot convert to this URL: {why}. Convert to a local or "
                                     "shared directory (NFS, Lustre...) and copy it afterwards")
    url = text.rstrip("/")
    if "/" not in url[len("gs://"):] or any(c in url for c in "?#"):
        raise UnsupportedFormatError(f"{shown}: name a directory inside the bucket, e.g. gs://bucket/ckpts/out")
    for held in inputs:
        if held == url or held.startswith(url + "/"):
            raise OutputExistsError(f"{shown} is or holds the checkpoint being converted "
                                    f"({redact_url(held)}); choose another {spoken('output path', 'OUT')}")
    if dry_run:
        return url
    path = gcs_path(url)
    if _exists(path):
        if not force:
            raise OutputExistsError(f"{shown} already exists; use {option('force')} to replace it")
        check_replaceable(path)
    return url


def gcs_path(url: str) -> Any:
    """``url`` as an ``epath.Path`` (the paths Orbax writes through), on gcsfs (:func:`prefer_gcsfs`)."""
    from etils import epath

    prefer_gcsfs()
    return epath.Path(url)


def prefer_gcsfs() -> None:
    """Make ``etils.epath`` (and so Orbax) reach ``gs://`` through gcsfs, not TensorFlow's gfile.

    epath takes TensorFlow whenever it is importable, which imports TensorFlow into a library that never
    does and, with no TensorFlow GCS setup, fails with a raw TensorFlow traceback. So unless the user
    chose (``EPATH_USE_TF`` is set) or gcsfs is missing, ``EPATH_USE_TF=false`` is set for this process.
    """
    if "EPATH_USE_TF" in os.environ:
        return
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        return
    os.environ["EPATH_USE_TF"] = "false"
    from etils.epath import gpath

    decided = getattr(gpath, "_is_tf_installed", None)  # epath decides once per process: decide again
    if hasattr(decided, "cache_clear"):
        decided.cache_clear()


def _exists(path: Any) -> bool:
    try:
        return path.exists()
    except ImportError as e:  # fsspec: "Install gcsfs to access Google Storage"
        raise UnsupportedFormatError(f"{redact_url(str(path))}: writing gs:// needs gcsfs (pip install "
                                     f"'tf2flax[gcs]') or TensorFlow's file systems ({e})") from None
    except Exception as e:  # noqa: BLE001 - gcsfs raises OSError, TensorFlow's gfile its own OpError
        raise StorageError(f"{redact_url(str(path))}: cannot list the output location: "
                           f"{redact_url(' '.join(str(e).split()))[:500]}") from None


def write_orbax_url(plan: Plan, url: str, *, force: bool = False, progress: bool = False,
                    custom_metadata: dict | None = None, team: Any = None) -> tuple[int, int]:
    """Write every entry of ``plan`` to the new Orbax checkpoint at ``url`` (``gs://``, checked by
    :func:`check_output_url`) in one Orbax save; returns ``(tensors, bytes)``.

    With ``force`` an existing checkpoint tf2flax wrote is deleted first. On any error or interrupt
    (SIGINT or SIGTERM between reads) what was written is deleted. ``team``: as for
    :func:`~.orbax_writer.write_orbax`.

    Example::

        write_orbax_url(plan, "gs://bucket/ckpts/out")
    """
    team = team or Solo()
    out = gcs_path(url)
    primary = team.primary
    share = team.share_bytes(plan)
    team.step("check the memory", lambda: check_memory(url, share))
    started = False
    try:
        if force:
            team.step("remove the old output", lambda: _remove(out, check=True) if primary else None)
        started = True
        with orbax_context(), ByteProgress(share, progress, "reading") as bar, \
                signals_between_groups() as check:
            items: list[tuple[str, Any]] = []
            for group in groups(plan):
                items += team.step(f"read {group[0][0]}", lambda: team.read(group))
                bar.advance(team.share_bytes(Plan(dict(group), plan.report)))
                check()
            bar.advance(0, description=f"writing {len(plan.entries)} tensors")
            team.step("write the checkpoint", lambda: _save(url, nest(items), custom_metadata))
            del items
            check()
            team.step("record the leaves", lambda: team.committed(out) if primary else None)
    except BaseException:
        if primary and started:
            with contextlib.suppress(Exception):
                _remove(out, check=False)
        raise
    finally:
        for entry in plan.entries.values():
            release_source(entry.source)
    return len(plan.entries), total_bytes(plan)


def available_memory() -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(url: str, nbytes: int) -> None:
    """Refuse up front a ``gs://`` conversion whose share (held until Orbax's one save writes it:
    1.5x to 2x the share at peak, measured) exceeds the memory available, rather than be killed
    halfway through."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise UnsupportedFormatError(
            f"{redact_url(url)}: writing {human_bytes(nbytes)} to gs:// holds it in memory until Orbax's one save "
            f"(it cannot stream to GCS), and only {human_bytes(available)} is available: run with "
            f"{option('distributed')} over more hosts, or convert to a local directory and copy it")


def _save(url: str, tree: dict, custom_metadata: dict | None) -> None:
    import orbax.checkpoint as ocp

    try:
        ocp.v1.save(url, tree, custom_metadata=custom_metadata)
    except Exception as e:  # noqa: BLE001 - TensorStore, gcsfs and Orbax each raise their own
        raise StorageError(f"{redact_url(url)}: Orbax could not write the checkpoint: "
                           f"{redact_url(' '.join(str(e).split()))}") from e


def _remove(out: Any, *, check: bool) -> None:
    """Delete ``out``: its commit file first, so that it is never taken for finished meanwhile."""
    if check:
        if not out.exists():
            return
        check_replaceable(out)
    with contextlib.suppress(FileNotFoundError):
        (out / COMMIT_FILE).unlink()
    with contextlib.suppress(FileNotFoundError):
        out.rmtree()
