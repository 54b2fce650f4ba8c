"""Configuration of alerting (`alerts:` and `alerting:` in serve.yaml): the rules over the audit log
and the webhook their changes go to. Part of `ServeConfig` (`serve/config.py`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from slmkit.config import StrictModel, env_name, http_url

AlertKind = Literal["error_rate", "p95_latency", "escalation_share"]
_KIND_NAMES: dict[str, str] = {
    "error_rate": "error-rate",
    "p95_latency": "p95-latency",
    "escalation_share": "escalation-share",
}


class AlertRule(StrictModel):
    """Fires when a value over a window passes its threshold: the error rate (the default), the p95
    latency (`p95_latency_above_s`) or the share of escalated answers (`escalation_share_above`).
    Printed by `slm logs`; the server logs each firing/resolved change and posts it to the webhook."""

    name: str = Field(
        default="error-rate",
        description="Name shown with the alert; default: error-rate, p95-latency or escalation-share.",
    )
    error_rate_above: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Fraction of failed requests (status >= 500 or 429) that fires.",
    )
    p95_latency_above_s: float | None = Field(
        default=None,
        gt=0,
        description="Make this a latency rule: fires when the p95 latency of answered requests "
        "exceeds this many seconds.",
    )
    escalation_share_above: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Make this an escalation rule: fires when this fraction of the requests was "
        "escalated by a route (reason `escalated:...`).",
    )
    window_s: float = Field(default=300.0, gt=0, description="Window in seconds.")
    min_requests: int = Field(
        default=20, ge=1, description="Fewer requests in the window never fire."
    )
    for_s: float = Field(
        default=0.0,
        ge=0,
        description="Fire only once the condition has held this many seconds (0 = at once).",
    )
    model: str | None = Field(
        default=None, description="Count only requests for this model or route id; default: all."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> AlertRule:
        given = [
            name
            for name in ("p95_latency_above_s", "escalation_share_above")
            if getattr(self, name) is not None
        ]
        if "error_rate_above" in self.model_fields_set:
            given.insert(0, "error_rate_above")
        if len(given) > 1:
            raise ValueError(
                f"an alert rule has one threshold: give only one of {' and '.join(given)}"
            )
        if "name" not in self.model_fields_set:
            self.name = _KIND_NAMES[self.kind]
        return self

    @property
    def kind(self) -> AlertKind:
        if self.p95_latency_above_s is not None:
            return "p95_latency"
        if self.escalation_share_above is not None:
            return "escalation_share"
        return "error_rate"

    @property
    def threshold(self) -> float:
        if self.p95_latency_above_s is not None:
            return self.p95_latency_above_s
        if self.escalation_share_above is not None:
            return self.escalation_share_above
        return self.error_rate_above


class WebhookSettings(StrictModel):
    """Where alerts are posted: a JSON POST per firing/resolved change, retried with backoff."""

    url: str = Field(description="URL that receives the alert JSON (http:// or https://).")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra HTTP headers sent with every POST."
    )
    bearer_env: str | None = Field(
        default=None,
        description="Environment variable holding a secret sent as `Authorization: Bearer` "
        "(never logged).",
    )
    timeout_s: float = Field(default=5.0, gt=0, description="Seconds per POST attempt.")
    retries: int = Field(
        default=3, ge=0, le=10, description="Attempts after the first when a POST fails."
    )
    backoff_s: float = Field(
        default=1.0, ge=0, description="Wait before the first retry; doubled for each next one."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return http_url(value)

    @field_validator("bearer_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        return env_name(value, "bearer_env", "ALERT_TOKEN")


class AlertingSettings(StrictModel):
    """How the server checks its alert rules and where it sends their changes."""

    check_interval_s: float = Field(
        default=5.0, gt=0, le=3600, description="Seconds between two checks of the alert rules."
    )
    webhook: WebhookSettings | None = Field(
        default=None, description="Post firing/resolved changes here; none = log lines only."
    )
    server: str | None = Field(
        default=None,
        description="This server's name in webhook payloads; default: host name and port.",
    )
