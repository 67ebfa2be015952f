"""Interrupts during a conversion: held while Orbax's writer threads write, raised between groups.

Example::

    with sigint_between_groups() as check:
        for group in groups:
            write(group)
            check()            # raises KeyboardInterrupt here if Ctrl-C came meanwhile
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator


@contextlib.contextmanager
def sigint_between_groups() -> Iterator[Callable[[], None]]:
    """Ctrl-C while Orbax's threads write would leave their files behind: in the main thread, hold it
    until ``check()`` (called between groups), which raises KeyboardInterrupt at a safe point."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield lambda: None
        return
    caught: list[int] = []

    def check() -> None:
        if caught:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)
