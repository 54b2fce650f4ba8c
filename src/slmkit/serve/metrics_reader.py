"""Reading a running gateway's `GET /metrics`: the Prometheus text of `slm serve` as numbers, and
the rates between two readings (requests/s, error rate, latency quantiles, tokens/s) that the
board's Monitor tab plots. The metric names are those of `metrics.py`."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import httpx

from slmkit.errors import ServeError
from slmkit.serve.alerts import is_failure

PREFIX = "slm_"


@dataclass
class MetricsReading:
    """One scrape of a gateway: cumulative counters since it started, and its gauges."""

    ts: float
    requests: float = 0.0
    failures: float = 0.0  # 5xx and 429, as alerts count them
    latency_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    completion_tokens: float = 0.0
    in_flight: float = 0.0
    firing: list[str] = field(default_factory=list)  # alert rules whose gauge is 1
    engines_up: dict[str, bool] = field(default_factory=dict)


@dataclass
class MetricsRates:
    """What happened between two readings (`None` where nothing was answered in between)."""

    ts: float
    requests_per_s: float
    error_rate: float | None
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    tokens_per_s: float
    in_flight: float


def gateway_root(url: str) -> str:
    """`http://host:port` from what a user types: a bare host:port, a trailing `/` or `/v1`."""
    url = url.strip().rstrip("/")
    if not url:
        raise ServeError(
            "no gateway URL", hint="give the URL of `slm serve`, e.g. http://127.0.0.1:8000"
        )
    if "://" not in url:
        url = "http://" + url
    return url.removesuffix("/v1")


def fetch_metrics(url: str, api_key: str | None = None, timeout_s: float = 5.0) -> MetricsReading:
    """Scrape `url/metrics` of a running `slm serve`; every failure is one `ServeError` line."""
    root = gateway_root(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{root}/metrics", headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise ServeError(
            f"cannot reach {root}/metrics: {reason}",
            hint="is `slm serve` running there? check the URL and port",
        ) from None
    if response.status_code == 401:
        raise ServeError(
            f"{root} refused the API key (HTTP 401)",
            hint="give one of the keys the server was started with (--api-key)",
        )
    if response.status_code != 200:
        raise ServeError(f"{root}/metrics answered HTTP {response.status_code}")
    reading = parse_metrics(response.text, time.time())
    if not reading.latency_buckets and PREFIX + "requests" not in response.text:
        raise ServeError(
            f"{root} is not an slm serve gateway (its /metrics has no slm_ metrics)",
            hint="point the monitor at the URL of `slm serve`",
        )
    return reading


def parse_metrics(text: str, ts: float) -> MetricsReading:
    """Sum each metric over its labels (endpoints, models); keep alert and engine gauges by name."""
    from prometheus_client.parser import text_string_to_metric_families

    reading = MetricsReading(ts=ts)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name == "slm_requests_total":
                reading.requests += value
                if is_failure(int(labels.get("status", "0") or 0)):
                    reading.failures += value
            elif name == "slm_request_latency_seconds_bucket":
                le = float(labels["le"])
                reading.latency_buckets[le] = reading.latency_buckets.get(le, 0.0) + value
            elif name == "slm_completion_tokens_total":
                reading.completion_tokens += value
            elif name == "slm_requests_in_flight":
                reading.in_flight += value
            elif name == "slm_alert_firing" and value >= 1:
                reading.firing.append(labels.get("rule", "?"))
            elif name == "slm_engine_up":
                reading.engines_up[labels.get("model", "?")] = value >= 1
    return reading


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' `histogram_quantile`: linear interpolation inside the bucket that holds rank q."""
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return lower  # beyond the largest finite bucket: its bound is all we know
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def rates(before: MetricsReading, after: MetricsReading) -> MetricsRates:
    """The rates between two readings; a gateway that restarted in between counts from zero."""
    if after.requests < before.requests:
        before = MetricsReading(ts=before.ts)
    span = max(after.ts - before.ts, 1e-9)
    requests = after.requests - before.requests
    buckets = {
        le: count - before.latency_buckets.get(le, 0.0)
        for le, count in after.latency_buckets.items()
    }
    quantiles = [histogram_quantile(q, buckets) for q in (0.5, 0.95, 0.99)]
    return MetricsRates(
        ts=after.ts,
        requests_per_s=requests / span,
        error_rate=(after.failures - before.failures) / requests if requests > 0 else None,
        latency_p50=quantiles[0],
        latency_p95=quantiles[1],
        latency_p99=quantiles[2],
        tokens_per_s=(after.completion_tokens - before.completion_tokens) / span,
        in_flight=after.in_flight,
    )
