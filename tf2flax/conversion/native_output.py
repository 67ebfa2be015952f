"""Keeping native libraries' chatter off the command line's stdout.

In a ``jax.distributed`` program on CPU, the gloo library behind JAX's collectives writes
``[Gloo] Rank 0 is connected to 1 peer ranks. ...`` with C++ ``std::cout`` each time it connects a
group of processes (at every Orbax save, not only at start-up), straight to file descriptor 1: no
logging setting or environment variable turns it off, and Python's ``sys.stdout`` never sees it.
:func:`dropping_native_lines` holds whatever reaches the descriptor in a temporary file and writes it
back at the end without those lines, so ``convert --distributed`` prints only its own output.

Example::

    with dropping_native_lines((b"[Gloo] ",)):
        convert(...)              # gloo's lines are dropped, anything else comes out afterwards
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterable, Iterator

GLOO = (b"[Gloo] ",)


@contextlib.contextmanager
def dropping_native_lines(prefixes: tuple[bytes, ...] = GLOO, fd: int = 1) -> Iterator[None]:
    """Within it, what anything (Python or native code) writes to ``fd`` is held; on leaving, even by
    an exception, it is written to ``fd`` in order, without the lines that start with one of
    ``prefixes``. Output held when the process is killed (SIGKILL) is lost."""
    stream = sys.stdout if fd == 1 else sys.stderr if fd == 2 else None
    if stream is not None:
        stream.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), fd)
        try:
            yield
        finally:
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            os.dup2(saved, fd)
            os.close(saved)
            held.seek(0)
            kept = without_lines(held, prefixes)
            with contextlib.suppress(OSError):
                view = memoryview(kept)
                while view:
                    view = view[os.write(fd, view):]


def without_lines(lines: Iterable[bytes], prefixes: tuple[bytes, ...] = GLOO) -> bytes:
    """``lines`` joined, less those starting with one of ``prefixes``. Threads of a native library
    writing at once can run two messages into one line (``[Gloo] a[Gloo] b``) and leave their line
    ends as a blank line after it: one blank line per extra message is dropped too.

    Example::

        without_lines([b"[Gloo] a[Gloo] b\\n", b"\\n", b"done\\n"])     # b"done\\n"
    """
    kept, blanks_owed = [], 0
    for line in lines:
        if line.startswith(prefixes):
            blanks_owed += sum(line.count(p) for p in prefixes) - 1
        elif blanks_owed and not line.strip():
            blanks_owed -= 1
        else:
            kept.append(line)
    return b"".join(kept)
