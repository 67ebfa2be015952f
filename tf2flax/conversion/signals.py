"""Interrupts during a conversion: SIGINT (Ctrl-C) and SIGTERM are held while Orbax's writer threads
write, and raised between groups, so that the caller can remove its temporary files.

Example::

    with signals_between_groups() as check:
        for group in groups:
            write(group)
            check()            # raises here if a signal came meanwhile
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

# The signals held, with the handler each has when nobody else installed one (only those are held).
_HELD = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


@contextlib.contextmanager
def signals_between_groups() -> Iterator[Callable[[], None]]:
    """In the main thread, hold SIGINT and SIGTERM until ``check()`` (called between groups, and on
    leaving), which raises ``KeyboardInterrupt`` for SIGINT and ``SystemExit(128 + SIGTERM)`` for
    SIGTERM at a safe point. A signal someone else handles is left to them."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    caught: list[int] = []

    def check() -> None:
        if caught:
            if caught[0] == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + caught[0])

    previous = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum))
                for signum, default in _HELD.items() if signal.getsignal(signum) is default}
    try:
        yield check
        check()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
