"""What every tab of the board shares: where runs live and where the board keeps its own work."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.paths import slm_home
from slmkit.ui.jobs import JobRunner


@dataclass
class Board:
    """The board's folders and its background jobs (trainings, evaluations, exports)."""

    runs_dir: Path
    work_dir: Path = field(default_factory=lambda: slm_home() / "board")
    jobs: JobRunner = field(init=False)
    loaders: list[tuple[Callable[..., Any], list[Any], list[Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.runs_dir = self.runs_dir.expanduser().resolve()
        self.work_dir = self.work_dir.expanduser().resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.jobs = JobRunner(self.work_dir / "jobs")

    def on_load(self, fn: Callable[..., Any], inputs: list[Any], outputs: list[Any]) -> None:
        """Run `fn` when a page (re)loads: tabs fill their tables and re-attach to running jobs."""
        self.loaders.append((fn, inputs, outputs))

    def folder(self, name: str) -> Path:
        """A folder of the board's own (uploads, evals, exports), created on first use."""
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path
