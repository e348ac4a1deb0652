"""Progress display shared by every stage: rich bars on a terminal, quiet when disabled.

Long work (decoding, training, calibration, benchmarks) reports through here so that ``--quiet`` and
non-rank-0 processes turn every bar off in one place. Status lines are not here: each module logs them
with ``logging`` (the CLI's handler shows them, see ``cli/logs.py``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_enabled = os.environ.get("RESNET_DEPLOY_QUIET", "") in ("", "0")


def set_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


def console():
    from rich.console import Console

    return Console(stderr=True, quiet=not _enabled)


@contextlib.contextmanager
def bar(description: str, total: int | None) -> Iterator["BarHandle"]:
    """A progress bar; ``handle.advance(n, **fields)`` moves it and shows fields such as loss."""
    if not _enabled:
        yield BarHandle(None, None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    ]
    with Progress(*columns, console=console(), transient=False) as progress:
        task = progress.add_task(description, total=total, status="")
        yield BarHandle(progress, task)


class BarHandle:
    def __init__(self, progress, task) -> None:
        self._progress = progress
        self._task = task

    def advance(self, steps: int = 1, status: str | None = None) -> None:
        if self._progress is None:
            return
        if status is None:
            self._progress.advance(self._task, steps)
        else:
            self._progress.update(self._task, advance=steps, status=status)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(description, total) as handle:
        for item in items:
            yield item
            handle.advance()
