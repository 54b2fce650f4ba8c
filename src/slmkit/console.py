"""Terminal output: one rich console on stderr for progress/logs, tables, and progress bars.

Stages never print directly; they call these helpers (or take a callback), so the UI can
show the same thing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)
# Results go to stdout so they can be piped; a line is never wrapped at the terminal width (rich
# wraps at 80 columns when stdout is not a terminal, which would split `RUN=$(slm train r.yaml)`).
out = Console(highlight=False, soft_wrap=True)


def result_line(text: str) -> None:
    """One machine-readable line on stdout (a path, an id, JSON): whole, no markup or emoji."""
    out.print(text, markup=False, emoji=False, highlight=False, soft_wrap=True)


def info(message: str) -> None:
    console.print(message)


def warn(message: str) -> None:
    """One line on stderr, never wrapped at the terminal width (log readers and greps see it whole)."""
    console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


@contextmanager
def progress_bar(description: str, total: float | None, unit_field: str = "") -> Iterator[Progress]:
    """A progress bar with elapsed time and ETA; `unit_field` is a task field shown after the bar
    (e.g. "rate" updated with `progress.update(task, rate="145 tok/s")`)."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    if unit_field:
        columns.append(TextColumn(f"{{task.fields[{unit_field}]}}"))
    if console.is_terminal:
        with Progress(*columns, console=console) as progress:
            yield progress
    else:  # a log file or CI: no live bar, a plain line every few seconds instead
        with LineProgress(console=console, unit_field=unit_field) as progress:
            yield progress


class LineProgress(Progress):
    """Progress for logs: prints `description: done/total (pct) elapsed eta [fields]` at most every
    `interval` seconds and once at the end, instead of redrawing a bar."""

    def __init__(self, *, console: Console, unit_field: str = "", interval: float = 15.0) -> None:
        super().__init__(console=console, disable=True)
        self.unit_field = unit_field
        self.interval = interval
        self._last: dict[TaskID, float] = {}
        self._final: set[TaskID] = set()

    def update(self, task_id: TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._line(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._line(task_id)

    def _line(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        now = time.monotonic()
        last = self._last.setdefault(task_id, now)
        done = task.total is not None and task.completed >= task.total
        if task_id in self._final or (not done and now - last < self.interval):
            return
        self._last[task_id] = now
        if done:
            self._final.add(task_id)
        total = f"/{task.total:.0f}" if task.total else ""
        pct = f" ({100 * task.completed / task.total:.0f}%)" if task.total else ""
        eta = f", eta {task.time_remaining:.0f}s" if task.time_remaining and not done else ""
        extra = f"  {task.fields.get(self.unit_field, '')}" if self.unit_field else ""
        elapsed = task.elapsed or 0.0
        self.console.print(
            f"{task.description}: {task.completed:.0f}{total}{pct}, {elapsed:.0f}s{eta}{extra}",
            highlight=False,
        )
