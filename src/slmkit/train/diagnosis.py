"""Read a loss curve and say what is going on: healthy, stalled, overfitting or diverged, with advice."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

Status = Literal["healthy", "stalled", "overfitting", "diverged", "too-short"]

ADVICE: dict[str, list[str]] = {
    "diverged": [
        "lower train.lr by 3-10x (e.g. 2e-4 -> 5e-5)",
        "keep train.max_grad_norm at 1.0 (or lower it) and add warmup (train.warmup_ratio: 0.05-0.1)",
        "with fp16, switch to bf16 or fp32 (train.precision)",
    ],
    "stalled": [
        "raise train.lr (LoRA usually wants 1e-4 to 1e-3)",
        "train longer (train.epochs) or raise the adapter capacity (lora.r, lora.target_modules: all-linear)",
        "check the data: are labels present (`slm data stats`) and do the answers differ from what the model already says?",
    ],
    "overfitting": [
        "stop earlier: fewer train.epochs, or use the checkpoint where validation loss was lowest",
        "add more (and more varied) examples; paraphrase the questions",
        "lower lora.r or raise lora.dropout; lower train.lr",
    ],
    "healthy": [
        "nothing to change; compare the tuned model with the base on your eval set (`slm eval`)"
    ],
    "too-short": ["log more steps (train.logging_steps) or train longer to get a meaningful curve"],
}


@dataclass
class Diagnosis:
    status: Status
    summary: str
    advice: list[str] = field(default_factory=list)
    first_loss: float | None = None
    last_loss: float | None = None
    best_val_loss: float | None = None
    last_val_loss: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _window_mean(values: list[float], start: int, size: int) -> float:
    part = values[start : start + size] if start >= 0 else values[start:]
    return sum(part) / len(part)


def diagnose(train: list[float], val: list[float] | None = None) -> Diagnosis:
    """Classify a curve from its train losses (in logging order) and optional validation losses."""
    val = val or []
    if any(not math.isfinite(x) for x in train + val):
        return _make("diverged", "the loss became NaN/inf: training blew up", train, val)
    if len(train) < 4:
        return _make("too-short", f"only {len(train)} loss point(s): too few to judge", train, val)
    window = max(1, len(train) // 5)
    first, last = _window_mean(train, 0, window), _window_mean(train, -window, window)
    if last > first * 1.5:
        return _make("diverged", f"the loss rose from {first:.3f} to {last:.3f}", train, val)
    peak = max(train[window:])
    if peak > 4 * max(first, 1e-6):
        at = window + train[window:].index(peak) + 1
        summary = f"the loss spiked to {peak:.3f} at log {at} (from {first:.3f} at the start)"
        return _make("diverged", summary, train, val)
    train_fell = last < first * 0.95  # a flat train loss with noisy validation is stalled
    if len(val) >= 3 and val[-1] > min(val) * 1.1 and train_fell:
        return _make(
            "overfitting",
            f"validation loss rose from its best {min(val):.3f} to {val[-1]:.3f} while train loss kept falling",
            train,
            val,
        )
    if last < 0.05 and first > 0.5:
        return _make(
            "overfitting",
            f"train loss collapsed to {last:.3f}: the model is memorising the examples",
            train,
            val,
        )
    if not train_fell:
        return _make("stalled", f"the loss barely moved ({first:.3f} -> {last:.3f})", train, val)
    return _make("healthy", f"the loss fell from {first:.3f} to {last:.3f}", train, val)


def _make(status: Status, summary: str, train: list[float], val: list[float]) -> Diagnosis:
    finite_val = [v for v in val if math.isfinite(v)]
    return Diagnosis(
        status=status,
        summary=summary,
        advice=list(ADVICE[status]),
        first_loss=train[0] if train else None,
        last_loss=train[-1] if train else None,
        best_val_loss=min(finite_val) if finite_val else None,
        last_val_loss=val[-1] if val else None,
    )
