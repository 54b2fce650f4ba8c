"""The measured inputs of `slm cost`: a machine's throughput from a `slm bench serve --json` report,
and a traffic profile from the audit log of `slm serve`."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.errors import ConfigError, SlmError
from slmkit.serve.audit_schema import reading, user_traffic
from slmkit.state.sql import describe_target, query

DAY_S = 86_400.0


@dataclass(frozen=True)
class Throughput:
    """What one machine sustains with `concurrency` requests in flight."""

    tokens_per_s: float
    concurrency: int
    source: str
    requests_per_s: float | None = None
    ttft_s: float | None = None  # p95, measured
    tpot_s: float | None = None  # p95, measured
    latency_s: float | None = None  # p95 of one request of the profile's length, entered

    def latency_for(self, completion_tokens: float) -> float | None:
        """p95 seconds of a request of `completion_tokens`: entered, or TTFT + (n - 1) x TPOT."""
        if self.latency_s is not None:
            return self.latency_s
        if self.ttft_s is None or self.tpot_s is None:
            return None
        return self.ttft_s + max(completion_tokens - 1, 0) * self.tpot_s


def read_bench(path: Path) -> Throughput:
    """Throughput measured by `slm bench serve --json`; a bad file is one `--bench:` line."""
    if not path.is_file():
        raise ConfigError(f"--bench: no such file: {path}")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        tokens_per_s = float(report["tokens_per_s"])
        requests_per_s = float(report["requests_per_s"])
        concurrency = int(report["concurrency"])
        ok = int(report["requests"]) - int(report["errors"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"--bench: {path} is not a `slm bench serve --json` report ({type(exc).__name__}: {exc})"
        ) from exc
    if ok <= 0 or tokens_per_s <= 0:
        first = report.get("first_error") or "no tokens"
        raise ConfigError(f"--bench: {path} has no successful request ({first})")
    return Throughput(
        tokens_per_s=tokens_per_s,
        requests_per_s=requests_per_s,
        concurrency=concurrency,
        source=f"{path} ({report.get('model', '?')} at {report.get('url', '?')})",
        ttft_s=_seconds(report.get("ttft_ms")),
        tpot_s=_seconds(report.get("tpot_ms")),
    )


def _seconds(percentiles: Any) -> float | None:
    value = percentiles.get("p95") if isinstance(percentiles, dict) else None
    return None if value is None else float(value) / 1000


@dataclass(frozen=True)
class AuditProfile:
    """Answered requests (status 200) of the audit log over the last `window_days`."""

    db: str
    window_days: float
    requests: int
    requests_per_day: float
    prompt_tokens: float
    completion_tokens: float
    peak_concurrency: int
    first_ts: float
    last_ts: float
    routed: int = 0  # answered requests that came through a route (whose first member is known)
    routed_local: int = 0  # of those, answered by the route's first chain member

    @property
    def local_share(self) -> float | None:
        """Measured hybrid split: the routed requests answered by their chain's first member."""
        return self.routed_local / self.routed if self.routed else None

    def values(self) -> dict[str, float]:
        """The profile fields of `CostConfig` this log measures."""
        measured = {
            "requests_per_day": self.requests_per_day,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "peak_concurrency": self.peak_concurrency,
        }
        if self.local_share is not None:
            measured["local_share"] = self.local_share
        return measured


def audit_profile(db: Path | str, window_days: float, now: float | None = None) -> AuditProfile:
    """Requests/day (answered requests / window), mean token counts, and the most requests in
    flight at once (overlap of [ts, ts + latency]) over the window."""
    since = (now or time.time()) - window_days * DAY_S
    where = describe_target(db)
    try:
        with reading(db, "start `slm serve` first") as conn:
            rows = [
                (r["ts"], r["latency_s"], r["prompt_tokens"], r["completion_tokens"])
                for r in query(
                    conn,
                    "SELECT ts, latency_s, prompt_tokens, completion_tokens FROM requests "
                    f"WHERE status = 200 AND ts >= ? AND {user_traffic(conn)} ORDER BY ts",
                    (since,),
                )
            ]
    except SlmError as exc:
        if exc.message.startswith("no audit log"):
            raise ConfigError(
                f"--audit-db: no audit log at {where} (start `slm serve` first)"
            ) from None
        raise ConfigError(f"--audit-db: {exc.message}") from None
    if not rows:
        raise ConfigError(
            f"--audit-db: no answered request in the last {window_days:g} days of {where}"
        )
    routed, local = _routed_counts(db, window_days * DAY_S, now)
    return AuditProfile(
        db=where,
        window_days=window_days,
        requests=len(rows),
        requests_per_day=len(rows) / window_days,
        prompt_tokens=_mean([r[2] for r in rows]),
        completion_tokens=max(_mean([r[3] for r in rows]), 1.0),
        peak_concurrency=max(
            _peak_overlap([(r[0], r[0] + max(r[1] or 0.0, 1e-6)) for r in rows]), 1
        ),
        first_ts=rows[0][0],
        last_ts=rows[-1][0],
        routed=routed,
        routed_local=local,
    )


def _routed_counts(db: Path | str, window_s: float, now: float | None) -> tuple[int, int]:
    """Answered routed requests and how many of them the chain's first member answered (0, 0 for
    a log without routes, or one written before the audit log had route columns)."""
    from slmkit.serve.logs import route_stats

    try:
        stats = route_stats(db, window_s, now)
    except sqlite3.Error:  # a SQLite file older than the route columns
        return 0, 0
    known = [s for s in stats if s.first_member is not None]
    return sum(s.answered for s in known), sum(s.local for s in known)


def _mean(values: list[int | None]) -> float:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else 0.0


def _peak_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one instant (a span ending exactly when another starts does not overlap)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = open_now = 0
    for _, step in events:  # at equal times -1 sorts first: an end frees its slot before a start
        open_now += step
        peak = max(peak, open_now)
    return peak
