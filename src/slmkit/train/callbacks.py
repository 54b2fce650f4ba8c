"""Trainer callbacks: progress bar with tokens/s, metrics.jsonl, TensorBoard, NaN stop, live diagnosis."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from slmkit import console
from slmkit.train.diagnosis import diagnose


class MetricsFileCallback(TrainerCallback):
    """Append every log line (with step, epoch and wall time) to RUN/metrics.jsonl on rank 0."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "time": round(time.time(), 3)}
        row.update({k: _jsonable(v) for k, v in logs.items()})
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


TRACKER_MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def available_trackers(wanted: Sequence[str]) -> list[str]:
    """The wanted experiment trackers whose package is installed."""
    import importlib.util

    return [name for name in wanted if importlib.util.find_spec(TRACKER_MODULES[name]) is not None]


def tensorboard_callbacks(wanted: Sequence[str], folder: Path) -> list[TrainerCallback]:
    """A TensorBoard writer for `folder` when `wanted` names it (and it is installed).

    transformers' own TensorBoardCallback reads its folder from TENSORBOARD_LOGGING_DIR, which
    would follow every later run of the same process (`slm run`'s DPO stage after SFT); this one
    is given its run's folder.
    """
    if "tensorboard" not in available_trackers(wanted):
        return []
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(folder)  # the writer is opened lazily, on rank 0 only
    return [callback]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume: drop log lines written after the checkpoint we continue from."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= last_step
    ]
    path.write_text("".join(line + "\n" for line in kept))


class NanStopCallback(TrainerCallback):
    """Stop at the first NaN/inf loss and skip the checkpoint that would hold broken weights."""

    def __init__(self) -> None:
        self.bad_step: int | None = None

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        values = [logs.get("loss"), logs.get("grad_norm")] if logs else []
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            self.bad_step = state.global_step
            control.should_training_stop = True
            control.should_save = False


class ProgressCallback(TrainerCallback):
    """A rich progress bar: loss, non-padding tokens/s, ETA; warns once when the curve looks unhealthy."""

    def __init__(self, description: str, val_key: str = "eval_loss") -> None:
        self.description = description
        self.val_key = val_key
        self.losses: list[float] = []
        self.val_losses: list[float] = []
        self._bar: Any = None
        self._progress: Any = None
        self._task: Any = None
        self._t0 = 0.0
        self._tokens0 = 0
        self._warned: set[str] = set()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        self._bar = console.progress_bar(self.description, state.max_steps, unit_field="stats")
        self._progress = self._bar.__enter__()
        self._task = self._progress.add_task(
            self.description, total=state.max_steps, completed=state.global_step, stats=""
        )
        self._t0 = time.perf_counter()
        self._tokens0 = state.num_input_tokens_seen

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step, stats=self._stats(state))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if not logs or not state.is_world_process_zero:
            return
        if "loss" in logs:
            self.losses.append(float(logs["loss"]))
        if self.val_key in logs:
            self.val_losses.append(float(logs[self.val_key]))
        if self._progress is not None:
            self._progress.update(self._task, stats=self._stats(state))
        self._live_diagnosis()

    def _stats(self, state: Any) -> str:
        elapsed = max(time.perf_counter() - self._t0, 1e-6)
        rate = (state.num_input_tokens_seen - self._tokens0) / elapsed
        loss = f"loss {self.losses[-1]:.4f}" if self.losses else "loss -"
        val = f" val {self.val_losses[-1]:.4f}" if self.val_losses else ""
        speed = f"  {rate:,.0f} tok/s" if rate > 0 else ""  # DPO batches are not counted in tokens
        return f"{loss}{val}{speed}"

    def _live_diagnosis(self) -> None:
        if len(self.losses) < 8 or len(self.losses) % 4:
            return
        result = diagnose(self.losses, self.val_losses)
        if result.status in ("diverged", "overfitting") and result.status not in self._warned:
            self._warned.add(result.status)
            console.warn(f"{result.status}: {result.summary}; {result.advice[0]}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
            self._progress = None
