"""`slm feedback stats`: how much feedback there is, how good it says the answers are, and why
the bad ones were bad (tags), per model."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.feedback.audit_reader import FeedbackRow, read_rows


@dataclass
class ModelFeedback:
    """Feedback figures of one model (the model that answered)."""

    model: str
    requests: int = 0
    rated: int = 0
    up: int = 0
    down: int = 0
    corrections: int = 0
    escalated: int = 0
    failing_tags: Counter[str] = field(default_factory=Counter)

    @property
    def rated_share(self) -> float:
        return self.rated / self.requests if self.requests else 0.0

    @property
    def up_share(self) -> float | None:
        return self.up / self.rated if self.rated else None

    def as_dict(self, top: int) -> dict[str, Any]:
        return {
            "model": self.model,
            "requests": self.requests,
            "rated": self.rated,
            "rated_share": round(self.rated_share, 4),
            "up": self.up,
            "up_share": None if self.up_share is None else round(self.up_share, 4),
            "down": self.down,
            "corrections": self.corrections,
            "escalated": self.escalated,
            "failing_tags": dict(self.failing_tags.most_common(top)),
        }

    def add(self, row: FeedbackRow) -> None:
        self.requests += 1
        self.escalated += row.escalated
        if row.rating is None:
            return
        self.rated += 1
        if row.rating > 0:
            self.up += 1
            return
        self.down += 1
        self.corrections += bool(row.correction and row.correction.strip())
        self.failing_tags.update(row.tags)


def feedback_stats(
    audit_path: Path | str, since: float | None = None, model: str | None = None
) -> list[ModelFeedback]:
    """Per answering model, then an `all` line when there is more than one model."""
    per_model: dict[str, ModelFeedback] = {}
    total = ModelFeedback("all")
    for row in read_rows(audit_path, since, None, model):
        name = row.answered_by or "unknown"
        per_model.setdefault(name, ModelFeedback(name)).add(row)
        total.add(row)
    lines = [per_model[name] for name in sorted(per_model)]
    return [*lines, total] if len(lines) > 1 else lines or [total]
