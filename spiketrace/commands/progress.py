"""A rich progress display for long runs: a bar with live rate and spike count, and a line per
set-up or teardown stage. Safe to update from another thread."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TransactionProgress:
    def __init__(self, progress: Progress, console: Console):
        self.progress = progress
        self.console = console
        self.task = None
        self._t0 = 0.0

    def stage(self, text: str) -> None:
        self.console.log(text)

    def update(self, done: int, total: int, slow: int) -> None:
        if self.task is None:
            self._t0 = time.monotonic()
            self.task = self.progress.add_task("transactions", total=total, rate=0.0, slow=0)
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        self.progress.update(self.task, completed=done, rate=done / elapsed, slow=slow)


@contextlib.contextmanager
def transaction_progress(console: Console) -> Iterator[TransactionProgress]:
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:,.0f}/s"), TextColumn("[red]{task.fields[slow]} over 100 ms"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
    with progress:
        yield TransactionProgress(progress, console)
