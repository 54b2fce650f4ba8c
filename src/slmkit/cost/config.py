"""What `slm cost` compares: a traffic profile, upstream prices, and a machine with its throughput."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from slmkit.config import StrictModel
from slmkit.state.config import DatabaseTarget

# the traffic profile's fields that a measured audit log supplies (and `local_share` when it has routes)
PROFILE_FIELDS = ("requests_per_day", "prompt_tokens", "completion_tokens", "peak_concurrency")


class CostConfig(StrictModel):
    """A traffic profile, upstream API prices, and a self-hosted machine."""

    # traffic
    requests_per_day: float = Field(default=10_000, gt=0, description="Requests per day.")
    prompt_tokens: float = Field(default=500, ge=0, description="Prompt tokens per request.")
    completion_tokens: float = Field(
        default=200, ge=1, description="Completion tokens per request."
    )
    peak_concurrency: int = Field(
        default=8, ge=1, description="Requests in flight at the busiest moment."
    )
    latency_target: float = Field(
        default=10.0,
        gt=0,
        description="Seconds one request may take end to end (p95) at peak concurrency.",
    )
    days_per_month: float = Field(default=30, gt=0, le=31, description="Days in a month.")
    # upstream API
    input_price: float = Field(ge=0, description="Upstream API price per 1M prompt tokens.")
    output_price: float = Field(ge=0, description="Upstream API price per 1M completion tokens.")
    # self-hosting
    machine_price: float = Field(ge=0, description="Price of one serving machine per hour.")
    bench: Path | None = Field(
        default=None,
        description="A `slm bench serve --json` report measured on that machine.",
    )
    tokens_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Entered instead of --bench: output tokens/s of one machine at --machine-concurrency.",
    )
    requests_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Entered with --tokens-per-s: requests/s of one machine (optional).",
    )
    machine_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="Entered with --tokens-per-s: requests in flight on one machine at that rate.",
    )
    machine_latency: float | None = Field(
        default=None,
        gt=0,
        description="Entered with --tokens-per-s: p95 seconds of one request of the profile's length "
        "(optional; without it the latency target is not checked).",
    )
    # hybrid
    local_share: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="Hybrid: share of requests answered by the local model, the rest upstream "
        "(measured from --audit-db when its requests came through a route).",
    )
    audit_db: DatabaseTarget | None = Field(
        default=None,
        description="Audit log of `slm serve` (a SQLite file or a postgresql:// URL): requests/day, "
        "token means and peak concurrency "
        "measured there replace the profile's defaults (options given explicitly still win).",
    )
    window_days: float = Field(
        default=7, gt=0, description="Days of the audit log to measure (counted back from now)."
    )
