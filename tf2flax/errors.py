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
