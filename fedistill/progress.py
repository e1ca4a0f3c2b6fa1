"""A rich progress bar for long loops that stays silent when disabled (``--quiet``, tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class _Bar:
    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, **fields: float) -> None:
        if self._progress is None:
            return
        status = "  ".join(f"{k} {v:.4g}" for k, v in fields.items())
        self._progress.update(self._task, advance=n, status=status)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[_Bar]:
    """``with progress_bar("dm", 200, enabled) as bar: ... bar.advance(loss=l)``."""
    if not enabled:
        yield _Bar(None, None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=total, status="")
        yield _Bar(progress, task)
