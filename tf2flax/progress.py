"""A bytes progress bar on a terminal, nothing elsewhere.

Example::

    with ByteProgress(total=2_000_000_000, enabled=True, description="converting") as bar:
        bar.advance(64_000_000)
"""

from __future__ import annotations

from typing import Any


class ByteProgress:
    """A rich progress bar (bytes, speed, ETA) on stderr, shown only when ``enabled`` and stderr is a
    terminal (or a notebook); otherwise every method does nothing."""

    def __init__(self, total: int, enabled: bool, description: str = "") -> None:
        from rich.console import Console  # rich loads only where a bar may be shown (not for `ls`)
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        console = Console(stderr=True)
        self._bar: Progress | None = None
        if enabled and (console.is_terminal or console.is_jupyter):
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True)
            self._task = self._bar.add_task(description, total=max(total, 1))

    def __enter__(self) -> "ByteProgress":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, nbytes: int, description: str | None = None) -> None:
        """Count ``nbytes`` more as done (and optionally change the label)."""
        if self._bar is not None:
            self._bar.update(self._task, advance=nbytes, description=description)


def human_bytes(n: float) -> str:
    """``1234567`` -> ``'1.2 MB'`` (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 100 * scale else f"{n / scale:.0f} {unit}"
    return f"{n:.0f} B"


def human_rate(nbytes: int, seconds: float) -> str:
    """``(2_000_000_000, 1.6)`` -> ``'1.2 GB/s'``; ``'-'`` for no time at all."""
    return f"{human_bytes(nbytes / seconds)}/s" if seconds > 0 else "-"
