"""Settings of `slm monitor`. Every default lives here."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from slmkit.config import http_url
from slmkit.monitor.settings import MonitorSettings
from slmkit.serve.alert_config import WebhookSettings
from slmkit.state.config import DatabaseTarget


class MonitorConfig(MonitorSettings):
    """Which served model to re-evaluate, on which sets, against which baseline, and whom to tell."""

    url: str = Field(
        description="OpenAI-compatible base URL of the server, e.g. http://127.0.0.1:8000/v1."
    )
    model: str = Field(description="Model id to evaluate at that server.")
    feedback_audit: DatabaseTarget | None = Field(
        default=None,
        description="Audit log of `slm serve` (a SQLite file or a postgresql:// URL): also evaluate on the set built from its approved "
        "and corrected answers (`slm feedback export --to eval`).",
    )
    webhook: WebhookSettings | None = Field(
        default=None, description="Post drift firing/resolved changes here (JSON, with retries)."
    )
    state: Path | None = Field(
        default=None,
        description="State file (baseline, firing alerts); default: SLM_HOME/monitor/MODEL.json.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return http_url(value).rstrip("/")

    @model_validator(mode="after")
    def _something_to_evaluate(self) -> MonitorConfig:
        if not self.evals and self.feedback_audit is None:
            raise ValueError(
                "give an eval set (--eval SET) or a feedback audit log (--feedback-audit)"
            )
        if self.since is not None and self.feedback_audit is None:
            raise ValueError("since applies to the feedback set: give --feedback-audit too")
        return self
