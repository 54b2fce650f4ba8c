"""The arithmetic of `slm cost`: monthly cost of the API, of self-hosting, of a hybrid split, the
break-even volume, and the machines a profile needs.

Self-hosting is priced as whole machines running all month. One machine serves `concurrency`
requests at once (as measured) and at most min(requests/s, tokens/s / completion tokens) requests
per second; a profile needs enough machines for its peak concurrency and for its daily volume.
When the volume changes (the chart, the break-even) the profile keeps its shape: peak concurrency
grows in proportion to requests/day.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from slmkit.config import option_flag
from slmkit.cost.config import PROFILE_FIELDS, CostConfig
from slmkit.cost.profile import DAY_S, AuditProfile, Throughput, audit_profile, read_bench
from slmkit.errors import ConfigError

HOURS_PER_DAY = 24


def _ceil(x: float) -> int:
    return math.ceil(round(x, 9))  # 3.0000000001 from float division is 3 machines, not 4


@dataclass(frozen=True)
class CostModel:
    """Monthly costs as a function of requests/day, for one profile shape and one machine."""

    prompt_tokens: float
    completion_tokens: float
    peak_per_request_day: float  # peak concurrency / requests per day
    input_price: float  # per 1M tokens
    output_price: float
    machine_price: float  # per hour
    days_per_month: float
    machine_concurrency: int
    machine_rps: float  # requests/s one machine sustains for this profile
    local_share: float

    @property
    def api_cost_per_request(self) -> float:
        return (
            self.prompt_tokens * self.input_price + self.completion_tokens * self.output_price
        ) / 1e6

    @property
    def machine_month(self) -> float:
        return self.machine_price * HOURS_PER_DAY * self.days_per_month

    @property
    def requests_per_day_per_machine(self) -> float:
        """The most requests/day one machine takes: its concurrency or its throughput binds."""
        by_peak = self.machine_concurrency / self.peak_per_request_day
        return min(by_peak, self.machine_rps * DAY_S)

    def api(self, requests_per_day: float) -> float:
        return requests_per_day * self.days_per_month * self.api_cost_per_request

    def machines(self, requests_per_day: float) -> int:
        """Machines for this volume: enough for its peak concurrency and for its requests/s."""
        if requests_per_day <= 0:
            return 0
        peak = _ceil(requests_per_day * self.peak_per_request_day / self.machine_concurrency)
        volume = _ceil(requests_per_day / DAY_S / self.machine_rps)
        return max(1, peak, volume)

    def self_hosted(self, requests_per_day: float) -> float:
        return self.machines(requests_per_day) * self.machine_month

    def hybrid(self, requests_per_day: float) -> float:
        local = requests_per_day * self.local_share
        return self.self_hosted(local) + self.api(requests_per_day - local)

    def break_even(self) -> float | None:
        """Requests/day where one machine costs what the API does; None when a fully loaded
        machine still costs more than the API would for its traffic (self-hosting never pays)."""
        per_request_day = self.days_per_month * self.api_cost_per_request
        if per_request_day <= 0:
            return None
        volume = self.machine_month / per_request_day
        return volume if volume <= self.requests_per_day_per_machine else None


@dataclass
class CostResult:
    """What `slm cost` reports; `model` recomputes any cost for the chart."""

    model: CostModel
    requests_per_day: float
    peak_concurrency: int
    latency_target: float
    throughput: Throughput
    latency_s: float | None  # estimated p95 of one request of the profile's length
    machines: int
    machines_hybrid: int
    api_monthly: float
    self_hosted_monthly: float
    hybrid_monthly: float
    break_even_requests_per_day: float | None
    profile_source: dict[str, str]  # field -> "audit log" | "given" | "default"
    audit: AuditProfile | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def meets_latency(self) -> bool | None:
        return None if self.latency_s is None else self.latency_s <= self.latency_target

    @property
    def cheapest(self) -> str:
        costs = {
            "api": self.api_monthly,
            "self-hosted": self.self_hosted_monthly,
            "hybrid": self.hybrid_monthly,
        }
        return min(costs, key=lambda k: costs[k])

    def to_dict(self) -> dict[str, Any]:
        m = self.model
        return {
            "profile": {
                "requests_per_day": self.requests_per_day,
                "prompt_tokens": m.prompt_tokens,
                "completion_tokens": m.completion_tokens,
                "peak_concurrency": self.peak_concurrency,
                "latency_target_s": self.latency_target,
                "days_per_month": m.days_per_month,
                "source": self.profile_source,
            },
            "audit": None if self.audit is None else asdict(self.audit),
            "throughput": asdict(self.throughput),
            "machine_requests_per_s": m.machine_rps,
            "requests_per_day_per_machine": m.requests_per_day_per_machine,
            "latency_s": self.latency_s,
            "meets_latency": self.meets_latency,
            "machines": self.machines,
            "machines_hybrid": self.machines_hybrid,
            "local_share": m.local_share,
            "api_cost_per_request": m.api_cost_per_request,
            "monthly": {
                "api": self.api_monthly,
                "self_hosted": self.self_hosted_monthly,
                "hybrid": self.hybrid_monthly,
            },
            "cheapest": self.cheapest,
            "break_even_requests_per_day": self.break_even_requests_per_day,
            "notes": self.notes,
        }


def machine_throughput(config: CostConfig) -> Throughput:
    """From --bench, or the entered numbers (one or the other)."""
    entered = [
        name
        for name in ("tokens_per_s", "requests_per_s", "machine_concurrency", "machine_latency")
        if getattr(config, name) is not None
    ]
    if config.bench is not None:
        if entered:
            raise ConfigError(
                f"{option_flag((entered[0],))}: give either --bench or entered numbers"
            )
        return read_bench(config.bench)
    if config.tokens_per_s is None:
        raise ConfigError(
            "--bench: give a `slm bench serve --json` report, or --tokens-per-s and --machine-concurrency"
        )
    if config.machine_concurrency is None:
        raise ConfigError("--machine-concurrency: needed with --tokens-per-s")
    return Throughput(
        tokens_per_s=config.tokens_per_s,
        requests_per_s=config.requests_per_s,
        concurrency=config.machine_concurrency,
        source="entered",
        latency_s=config.machine_latency,
    )


def resolve_profile(config: CostConfig) -> tuple[CostConfig, dict[str, str], AuditProfile | None]:
    """The profile with the audit log's measurements in place of values not given explicitly."""
    given = config.model_fields_set
    source = {name: "given" if name in given else "default" for name in PROFILE_FIELDS}
    if config.audit_db is None:
        return config, source, None
    audit = audit_profile(config.audit_db, config.window_days)
    measured = {k: v for k, v in audit.values().items() if k not in given}
    source.update({name: "audit log" for name in measured})
    return config.model_copy(update=measured), source, audit


def estimate_cost(config: CostConfig) -> CostResult:
    """Monthly cost of API-only, self-hosted and hybrid serving of a traffic profile."""
    throughput = machine_throughput(config)
    config, source, audit = resolve_profile(config)
    by_tokens = throughput.tokens_per_s / config.completion_tokens
    rps = min(by_tokens, throughput.requests_per_s or by_tokens)
    model = CostModel(
        prompt_tokens=config.prompt_tokens,
        completion_tokens=config.completion_tokens,
        peak_per_request_day=config.peak_concurrency / config.requests_per_day,
        input_price=config.input_price,
        output_price=config.output_price,
        machine_price=config.machine_price,
        days_per_month=config.days_per_month,
        machine_concurrency=throughput.concurrency,
        machine_rps=rps,
        local_share=config.local_share,
    )
    volume = config.requests_per_day
    notes = [_local_share_note(config, source, audit)]
    latency = throughput.latency_for(config.completion_tokens)
    if latency is None:
        notes.append("latency target not checked: give --machine-latency with entered numbers")
    elif latency > config.latency_target:
        notes.append(
            f"one machine at {throughput.concurrency} concurrent takes ~{latency:.2f} s per request, "
            f"over the {config.latency_target:g} s target: measure at a lower concurrency"
        )
    return CostResult(
        model=model,
        requests_per_day=volume,
        peak_concurrency=config.peak_concurrency,
        latency_target=config.latency_target,
        throughput=throughput,
        latency_s=latency,
        machines=model.machines(volume),
        machines_hybrid=model.machines(volume * config.local_share),
        api_monthly=model.api(volume),
        self_hosted_monthly=model.self_hosted(volume),
        hybrid_monthly=model.hybrid(volume),
        break_even_requests_per_day=model.break_even(),
        profile_source=source,
        audit=audit,
        notes=notes,
    )


def _local_share_note(
    config: CostConfig, source: dict[str, str], audit: AuditProfile | None
) -> str:
    if source.get("local_share") == "audit log" and audit is not None:
        return (
            f"local share measured: {audit.routed_local} of {audit.routed} routed requests in the "
            "audit log were answered by their route's first model"
        )
    if "local_share" in config.model_fields_set:
        return "local share given (--local-share)"
    why = "no routed request in the audit log" if audit is not None else "no --audit-db"
    return f"local share is assumed (--local-share, default): {why}"
