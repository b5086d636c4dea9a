"""A rich progress bar in bytes, handed to long-running package functions as two callbacks."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


@contextlib.contextmanager
def byte_progress(console: Console, enabled: bool = True) -> Iterator[tuple[Callable[[int, str], None], Callable[[int], None]]]:
    """Yields (on_start(total, label), on_advance(n)); draws nothing when disabled."""
    if not enabled:
        yield (lambda total, label: None), (lambda n: None)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    progress = Progress(*columns, console=console, transient=False)
    task: list[int] = []

    def on_start(total: int, label: str) -> None:
        if not task:
            progress.start()  # lazily: an early error prints no empty bar
        task.append(progress.add_task(label, total=total))

    def on_advance(n: int) -> None:
        if task:
            progress.advance(task[-1], n)

    try:
        yield on_start, on_advance
    finally:
        if task:
            progress.stop()
