"""Settings of `slm monitor`. Every default lives here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from slmkit.config import StrictModel
from slmkit.serve.config import ENV_NAME, WebhookSettings

MonitorMetric = Literal["fact_recall", "exact_match", "rouge_l"]


class MonitorConfig(StrictModel):
    """Which served model to re-evaluate, on which sets, against which baseline, and whom to tell."""

    url: str = Field(
        description="OpenAI-compatible base URL of the server, e.g. http://127.0.0.1:8000/v1."
    )
    model: str = Field(description="Model id to evaluate at that server.")
    evals: list[Path] = Field(
        default_factory=list, description="Eval sets (JSONL, as for `slm eval`); repeatable."
    )
    feedback_audit: Path | None = Field(
        default=None,
        description="Audit log of `slm serve`: also evaluate on the set built from its approved "
        "and corrected answers (`slm feedback export --to eval`).",
    )
    since: str | None = Field(
        default=None,
        description="Feedback from this time on (2026-11-27, an ISO time, or 7d back from now).",
    )
    baseline: str = Field(
        default="auto",
        description="auto = the first run's scores, kept in the state file; or a state file of an "
        "earlier `slm monitor` run to compare with.",
    )
    threshold: float = Field(
        default=0.15,
        gt=0,
        lt=1,
        description="Relative drop of the main metric from the baseline that fires the drift alert.",
    )
    main_metric: MonitorMetric = Field(
        default="fact_recall",
        description="Metric compared (rouge_l for a set without must_include facts).",
    )
    max_tokens: int = Field(default=128, ge=1, description="Most new tokens per answer.")
    concurrency: int = Field(default=4, ge=1, le=64, description="Requests in flight.")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the server's API key."
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
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("url must start with http:// or https:// and name a host")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        if value is not None and not ENV_NAME.match(value):
            raise ValueError("api_key_env must be an environment variable name, e.g. SLM_KEY")
        return value

    @model_validator(mode="after")
    def _something_to_evaluate(self) -> MonitorConfig:
        if not self.evals and self.feedback_audit is None:
            raise ValueError(
                "give an eval set (--eval SET) or a feedback audit log (--feedback-audit)"
            )
        if self.since is not None and self.feedback_audit is None:
            raise ValueError("since applies to the feedback set: give --feedback-audit too")
        return self
