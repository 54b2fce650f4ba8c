"""Terminal output: one rich console on stderr for progress/logs, tables, and progress bars.

Stages never print directly; they call these helpers (or take a callback), so the UI can
show the same thing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)
out = Console(highlight=False)  # results go to stdout so they can be piped


def info(message: str) -> None:
    console.print(message)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}")


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
    with Progress(*columns, console=console) as progress:
        yield progress
