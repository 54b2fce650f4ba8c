"""What the Monitor tab shows of a running `slm serve`: one poll of its /metrics turned into a point
of each time series (kept per browser session), the totals and gauges, firing alerts, and the
latest requests from its audit log (the `slm logs` data)."""

from __future__ import annotations

import datetime as dt
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.serve.alerts import Alert
from slmkit.serve.config import ServeConfig
from slmkit.serve.logs import WindowStats, check_alerts, recent_requests, window_stats
from slmkit.serve.metrics_reader import MetricsRates, MetricsReading, fetch_metrics, rates
from slmkit.ui.charts import typed_frame

MAX_POINTS = 300  # 10 minutes at one poll every 2 s
REQUEST_COLUMNS = ["time", "id", "model", "endpoint", "status", "tokens in/out", "latency", "ttft"]
SERIES_COLUMNS = {"seconds": float, "value": float, "series": object}
SERIES = {
    "rps": ["requests/s"],
    "tps": ["output tokens/s"],
    "fly": ["in flight"],
    "lat": ["p50", "p95", "p99"],
    "err": ["error %"],
}


@dataclass
class MonitorSession:
    """One browser session's view of one gateway: its last reading and the points so far."""

    url: str = ""
    api_key: str = ""
    audit_db: str = ""
    first_ts: float | None = None  # the x axis counts seconds from the first reading
    last: MetricsReading | None = None
    points: list[MetricsRates] = field(default_factory=list)


def poll(session: MonitorSession) -> MonitorSession:
    """Scrape the gateway once and add the rates since the last scrape (a ServeError if unreachable)."""
    reading = fetch_metrics(session.url, session.api_key or None)
    if session.first_ts is None:
        session.first_ts = reading.ts
    if session.last is not None:
        session.points = [*session.points, rates(session.last, reading)][-MAX_POINTS:]
    session.last = reading
    return session


def series_frames(points: list[MetricsRates], first_ts: float | None) -> dict[str, Any]:
    """One long-format frame per plot: throughput, tokens/s, latency quantiles, error rate, in
    flight; x is seconds since watching started."""
    # One empty (NaN) point per series: a Gradio 6.31 plot with `color` whose first value has no
    # rows never colours its lines later (no stroke at all); a known series domain avoids that.
    rows: dict[str, list[dict[str, Any]]] = {
        key: [{"seconds": 0.0, "value": math.nan, "series": name} for name in names]
        for key, names in SERIES.items()
    }
    for p in points:
        at = p.ts - (first_ts or p.ts)
        rows["rps"].append({"seconds": at, "value": p.requests_per_s, "series": "requests/s"})
        rows["tps"].append({"seconds": at, "value": p.tokens_per_s, "series": "output tokens/s"})
        rows["fly"].append({"seconds": at, "value": p.in_flight, "series": "in flight"})
        if p.error_rate is not None:
            rows["err"].append({"seconds": at, "value": 100 * p.error_rate, "series": "error %"})
        for name, value in (("p50", p.latency_p50), ("p95", p.latency_p95), ("p99", p.latency_p99)):
            if value is not None:
                rows["lat"].append({"seconds": at, "value": 1000 * value, "series": name})
    return {key: typed_frame(found, SERIES_COLUMNS) for key, found in rows.items()}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def summary_html(session: MonitorSession) -> str:
    """Totals since the gateway started and the latest rates, as a row of figures."""
    reading = session.last
    if reading is None:
        return ""
    point = session.points[-1] if session.points else None
    engines = ", ".join(
        f"{model} {'up' if up else 'DOWN'}" for model, up in sorted(reading.engines_up.items())
    )
    figures = [
        ("requests", f"{reading.requests:.0f}", "since the gateway started"),
        ("failed", f"{reading.failures:.0f}", "5xx and 429"),
        ("output tokens", f"{reading.completion_tokens:.0f}", "since the gateway started"),
        ("in flight", f"{reading.in_flight:.0f}", "now"),
        ("requests/s", f"{point.requests_per_s:.2f}" if point else "-", "last poll"),
        (
            "error rate",
            f"{point.error_rate:.1%}" if point and point.error_rate is not None else "-",
            "last poll",
        ),
        ("p50 / p95 / p99", _quantiles(point), "last poll"),
        ("tokens/s", f"{point.tokens_per_s:.1f}" if point else "-", "last poll"),
    ]
    cells = "".join(
        f'<div class="slm-figure" data-name="{html.escape(name)}">'
        f'<div style="font-size:12px;color:#64748b">{html.escape(name)}</div>'
        f'<div style="font-size:20px;font-weight:600">{html.escape(value)}</div>'
        f'<div style="font-size:11px;color:#94a3b8">{html.escape(note)}</div></div>'
        for name, value, note in figures
    )
    grid = (
        '<div style="display:grid;grid-template-columns:repeat(8,1fr);gap:8px;'
        'padding:8px;border:1px solid #e2e8f0;border-radius:8px">'
    )
    footer = f'<div style="font-size:12px;color:#64748b;margin-top:4px">engines: {html.escape(engines or "-")}</div>'
    return grid + cells + "</div>" + footer


def _quantiles(point: MetricsRates | None) -> str:
    if point is None or point.latency_p50 is None:
        return "-"
    values = (point.latency_p50, point.latency_p95, point.latency_p99)
    return " / ".join("-" if v is None else f"{v * 1000:.0f}" for v in values) + " ms"


def alerts_html(firing: list[str], audit_alerts: list[Alert]) -> str:
    """Alerts the gateway reports as firing (its own rules), with the audit log's account of them."""
    if not firing and not audit_alerts:
        return '<div class="slm-status slm-ok">no alert firing</div>'
    lines = [f"ALERT {name}: firing (the gateway's /metrics)" for name in firing]
    lines += [f"ALERT {a.rule}: {a.message} (audit log)" for a in audit_alerts]
    return "".join(f'<div class="slm-status slm-error">{html.escape(x)}</div>' for x in lines)


@dataclass
class AuditView:
    """The latest requests, the last-5-minutes statistics and the alerts of an audit log."""

    rows: list[list[Any]]
    line: str
    alerts: list[Alert]


def audit_view(db: str, window_s: float = 300.0, last: int = 15) -> AuditView:
    """`slm logs` for the page; a missing audit log is the CLI's one-line error."""
    path = Path(db).expanduser()
    stats = window_stats(path, window_s)
    alerts = check_alerts(path, ServeConfig().alerts)
    return AuditView(
        [_request_row(row) for row in recent_requests(path, last)], stats_line(stats), alerts
    )


def stats_line(stats: WindowStats) -> str:
    """The summary line `slm logs` prints under its table."""
    return (
        f"last {stats.window_s:g} s: {stats.requests} requests, error rate {stats.error_rate:.1%}, "
        f"latency p50 {_ms(stats.latency_p50)} p95 {_ms(stats.latency_p95)} "
        f"p99 {_ms(stats.latency_p99)}, ttft p50 {_ms(stats.ttft_p50)}, "
        f"{stats.tokens_per_s:.1f} output tokens/s"
    )


def _request_row(row: dict[str, Any]) -> list[Any]:
    return [
        dt.datetime.fromtimestamp(row["ts"]).strftime("%H:%M:%S"),
        row["id"],
        str(row["model"]),
        row["endpoint"] or "",
        row["status"],
        f"{row['prompt_tokens'] or 0}/{row['completion_tokens'] or 0}",
        _ms(row["latency_s"]),
        _ms(row["ttft_s"]),
    ]
