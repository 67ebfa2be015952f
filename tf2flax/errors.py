"""The one exception hierarchy of tf2flax.

Every error the library raises on bad input is a :class:`Tf2FlaxError`. Messages name the
file, the tensor and what was expected, so that a user can act on them without a traceback.

Example::

    try:
        tf2flax.open_checkpoint("gs://bucket/run/ckpt-1")
    except tf2flax.errors.CheckpointNotFoundError as e:
        print(e)
"""

from __future__ import annotations

import contextlib
from typing import Iterator


class Tf2FlaxError(Exception):
    """Base class of every error tf2flax raises on bad input or bad usage."""


class CheckpointNotFoundError(Tf2FlaxError, FileNotFoundError):
    """A checkpoint, one of its files, or a state file's target does not exist."""


class TensorNotFoundError(Tf2FlaxError, KeyError):
    """A tensor name is not in the checkpoint."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CorruptCheckpointError(Tf2FlaxError, ValueError):
    """A checkpoint file's bytes do not decode as the format says (truncation, bit flips, bad CRC)."""


class UnsupportedFormatError(Tf2FlaxError, ValueError):
    """A valid file in a format or with a feature tf2flax does not read (V1 checkpoints, DT_VARIANT)."""


class RegionError(Tf2FlaxError, IndexError):
    """A region asked of a tensor does not fit it: out of range, too many dimensions, or not a box
    (steps other than 1, arrays of indices)."""


class MappingError(Tf2FlaxError, ValueError):
    """An assignment map, rule, preset or transform does not fit the checkpoint or the target tree."""


class StorageError(Tf2FlaxError, OSError):
    """The storage layer failed to read (permission denied, network failure after retries)."""


class OutputExistsError(Tf2FlaxError, FileExistsError):
    """An output path exists and overwriting was not asked for."""


def clip(text: str, limit: int = 120) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters (the rest counted): a hostile name or
    value never makes a message of megabytes.

    Example::

        clip("a/" * 100000, 10)      # "'a/a/a/a/a/'... (200000 characters)"
    """
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def short_repr(value: object) -> str:
    """``repr(value)`` bounded in size and depth (``reprlib``), for messages about user input.

    Example::

        short_repr([["x"] * 9] * 9)      # "[['x', 'x', 'x', 'x', 'x', 'x', ...], ...]"
    """
    import reprlib

    bounded = reprlib.Repr()
    bounded.maxlevel, bounded.maxstring, bounded.maxother = 4, 80, 80
    bounded.maxlist = bounded.maxtuple = bounded.maxdict = 6
    return bounded.repr(value)


class DistributedError(Tf2FlaxError, RuntimeError):
    """A process of a distributed conversion failed or did not answer; every process raises the same."""


# ---- wording: one language per interface ---------------------------------------------------------------

_COMMAND_LINE = False


@contextlib.contextmanager
def command_line_wording() -> Iterator[None]:
    """Within it, messages name options as the command line spells them (``--force``), not as Python
    arguments (``force=True``): the CLI runs every command inside it, so whichever layer raises, the
    user reads the words of the interface they used.

    Example::

        with command_line_wording():
            option("force")            # '--force'
        option("force")                # 'force=True'
    """
    global _COMMAND_LINE
    before, _COMMAND_LINE = _COMMAND_LINE, True
    try:
        yield
    finally:
        _COMMAND_LINE = before


def spoken(api: str, cli: str) -> str:
    """``cli`` inside :func:`command_line_wording`, else ``api``: a phrase of a message that differs between
    the Python API and the command line.

    Example::

        f"... and 3 more ({spoken('report.lines() has all', 'all listed above')})"
    """
    return cli if _COMMAND_LINE else api


def option(name: str, value: object = True) -> str:
    """An option as the user's interface spells it: ``force=True`` in Python, ``--force`` on the
    command line (``--dtype bfloat16`` for a value other than True).

    Example::

        f"{out} already exists; use {option('force')} to replace it"
    """
    flag = "--" + name.replace("_", "-")
    return spoken(f"{name}={value!r}", flag if value is True else f"{flag} {value}")
