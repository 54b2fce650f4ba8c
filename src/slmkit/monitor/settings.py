"""What a monitoring round measures, shared by `slm monitor` (`MonitorConfig`) and the `monitor:`
section of `slm serve` (`serve_section.ServeMonitor`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from slmkit.config import StrictModel, env_name

MonitorMetric = Literal["fact_recall", "exact_match", "rouge_l"]


class MonitorSettings(StrictModel):
    """The sets, the baseline, the threshold and how answers are asked for."""

    evals: list[Path] = Field(
        default_factory=list, description="Eval sets (JSONL, as for `slm eval`); repeatable."
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

    @field_validator("api_key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        return env_name(value, "api_key_env", "SLM_KEY")
