"""Every run folder under a root, with its status and loss curve: what `slm runs` prints and the
board's Runs tab shows, for runs trained from the CLI, by `slm run` or from the board."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slmkit.train import runfolder

SKIP_DIRS = {runfolder.CHECKPOINTS, "tensorboard", "adapter", "model", "merged", "export", "eval"}
MAX_DEPTH = 4


@dataclass
class RunInfo:
    """One run folder as a row: where, what, how far, how it ended."""

    path: str
    name: str
    status: str  # running | finished | failed | interrupted | diverged
    method: str
    finetuning: str
    base_model: str
    created: str
    steps: int | None
    final_loss: float | None
    data_hash: str
    resumable: bool
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_status(manifest: dict[str, Any]) -> str:
    """`running` only while the recorded trainer process lives; a killed one is `interrupted`."""
    status = str(manifest.get("status", "interrupted"))
    if status == "running" and not pid_alive(manifest.get("pid")):
        return "interrupted"
    return status


def data_hash(manifest: dict[str, Any]) -> str:
    """A short digest of the training files' contents (equal data, equal hash)."""
    files = manifest.get("data_files") or {}
    digest = hashlib.sha256(json.dumps(sorted(files.values())).encode()).hexdigest()
    return digest[:12] if files else ""


def read_run(run_dir: Path) -> RunInfo | None:
    """The run in `run_dir`, or None when it holds no readable manifest."""
    try:
        manifest = json.loads((run_dir / runfolder.MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or "method" not in manifest:
        return None
    rows = runfolder.read_metrics(run_dir)
    losses = runfolder.loss_series(rows, "loss")
    status = run_status(manifest)
    return RunInfo(
        path=str(run_dir),
        name=run_dir.name,
        status=status,
        method=str(manifest.get("method", "")),
        finetuning=str(manifest.get("finetuning_type", "")),
        base_model=str(manifest.get("base_model", "")),
        created=str(manifest.get("created", "")),
        steps=max((int(r["step"]) for r in rows if "step" in r), default=None),
        final_loss=losses[-1][1] if losses else None,
        data_hash=data_hash(manifest),
        resumable=status in ("interrupted", "failed")
        and runfolder.last_checkpoint(run_dir) is not None,
        error=manifest.get("error"),
    )


def _run_dirs(root: Path, depth: int) -> list[Path]:
    if depth > MAX_DEPTH or not root.is_dir():
        return []
    found = [root] if (root / runfolder.MANIFEST).is_file() else []
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name not in SKIP_DIRS and not child.name.startswith("."):
            found += _run_dirs(child, depth + 1)
    return found


def list_runs(root: Path | str) -> list[RunInfo]:
    """Every run folder under `root` (nested ones too, e.g. a pipeline's dpo/), newest first."""
    runs = [r for d in _run_dirs(Path(root).expanduser().resolve(), 0) if (r := read_run(d))]
    return sorted(runs, key=lambda r: r.created, reverse=True)


def loss_points(run_dir: Path | str) -> list[dict[str, Any]]:
    """Long-format loss points of one run: {step, loss, series: train|validation, run}."""
    run_dir = Path(run_dir)
    rows = runfolder.read_metrics(run_dir)
    points = []
    for key, series in (("loss", "train"), ("eval_loss", "validation")):
        for step, value in runfolder.loss_series(rows, key):
            points.append({"step": step, "loss": value, "series": series, "run": run_dir.name})
    return points
