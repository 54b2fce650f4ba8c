"""`slm logs`: recent requests and latency / error-rate / throughput statistics from the audit log."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError
from slmkit.serve.alert_config import AlertRule
from slmkit.serve.alerts import Alert, Window, evaluate_window, is_failure, percentile
from slmkit.serve.audit_schema import reading, user_traffic
from slmkit.state.sql import Database, query

Db = Path | str  # an audit log: a SQLite file or a PostgreSQL URL
HINT = "start `slm serve` first, or pass --db / --config"


@dataclass
class WindowStats:
    window_s: float
    requests: int
    errors: int
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    ttft_p50: float | None
    completion_tokens: int
    tokens_per_s: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def recent_requests(db: Db, limit: int = 20) -> list[dict[str, Any]]:
    with reading(db, HINT) as conn:
        return query(conn, "SELECT * FROM requests ORDER BY ts DESC LIMIT ?", (limit,))


def window_stats(db: Db, window_s: float, now: float | None = None) -> WindowStats:
    """Statistics over the last `window_s` seconds. Failed = status >= 500 or 429."""
    since = (now or time.time()) - window_s
    with reading(db, HINT) as conn:
        rows = query(
            conn,
            "SELECT ts, status, latency_s, ttft_s, completion_tokens FROM requests "
            f"WHERE ts >= ? AND {user_traffic(conn)}",
            (since,),
        )
    ok = [r for r in rows if r["status"] == 200]
    latencies = [r["latency_s"] for r in ok if r["latency_s"] is not None]
    ttfts = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    tokens = sum(r["completion_tokens"] or 0 for r in ok)
    span = (
        (max(r["ts"] + (r["latency_s"] or 0) for r in rows) - min(r["ts"] for r in rows))
        if rows
        else 0.0
    )
    return WindowStats(
        window_s=window_s,
        requests=len(rows),
        errors=sum(1 for r in rows if is_failure(r["status"])),
        latency_p50=percentile(latencies, 50),
        latency_p95=percentile(latencies, 95),
        latency_p99=percentile(latencies, 99),
        ttft_p50=percentile(ttfts, 50),
        completion_tokens=tokens,
        tokens_per_s=tokens / span if span > 0 else 0.0,
    )


def check_alerts(db: Db, rules: list[AlertRule], now: float | None = None) -> list[Alert]:
    """The rules that fire over the audit log's recent requests."""
    alerts = []
    for rule in rules:
        alert = evaluate_window(rule, audit_window(db, rule, now))
        if alert is not None:
            alerts.append(alert)
    return alerts


def audit_window(db: Db, rule: AlertRule, now: float | None = None) -> Window:
    """A rule's window over the audit log: its requests (of its model, if it names one)."""
    with reading(db, HINT) as conn:
        return window_of(conn, rule, now)


def window_of(conn: Database, rule: AlertRule, now: float | None = None) -> Window:
    """`audit_window` over an audit database that is open already (the gateways' shared one)."""
    since = (now or time.time()) - rule.window_s
    sql = "SELECT status, latency_s, route_reason FROM requests WHERE ts >= ?"
    params: tuple[Any, ...] = (since,)
    if rule.model is not None:
        sql, params = sql + " AND (model = ? OR route = ?)", (since, rule.model, rule.model)
    rows = query(conn, f"{sql} AND {user_traffic(conn)}", params)
    latencies = [r["latency_s"] for r in rows if r["status"] == 200 and r["latency_s"] is not None]
    return Window(
        requests=len(rows),
        failures=sum(1 for r in rows if is_failure(r["status"])),
        latency_p95_s=percentile(latencies, 95),
        answered=len(latencies),
        escalated=sum(1 for r in rows if (r["route_reason"] or "").startswith("escalated")),
    )


def feedback_rows(db: Db, limit: int = 20) -> list[dict[str, Any]]:
    with reading(db, HINT) as conn:
        return query(
            conn,
            "SELECT f.request_id, f.ts, f.rating, f.correction, r.model, r.prompt_text, r.response_text "
            "FROM feedback f LEFT JOIN requests r ON r.id = f.request_id ORDER BY f.ts DESC LIMIT ?",
            (limit,),
        )


@dataclass
class KeyStats:
    key: str
    requests: int
    rejected: int  # answered 429 (a per-key limit or a full queue)
    prompt_tokens: int
    completion_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def key_stats(db: Db, window_s: float, now: float | None = None) -> list[KeyStats]:
    """Requests, 429s and tokens per API key name over the last `window_s` seconds."""
    since = (now or time.time()) - window_s
    with reading(db, HINT) as conn:
        rows = query(
            conn,
            "SELECT key_id, COUNT(*) AS requests, "
            "SUM(CASE WHEN status = 429 THEN 1 ELSE 0 END) AS rejected, "
            "COALESCE(SUM(prompt_tokens), 0) AS prompt, "
            "COALESCE(SUM(completion_tokens), 0) AS completion FROM requests "
            "WHERE ts >= ? AND key_id IS NOT NULL GROUP BY key_id ORDER BY key_id",
            (since,),
        )
    return [
        KeyStats(
            r["key_id"],
            int(r["requests"]),
            int(r["rejected"]),
            int(r["prompt"]),
            int(r["completion"]),
        )
        for r in rows
    ]


def tokens_today_by_key(db: Db, now: float | None = None) -> dict[str, int]:
    """Tokens per key name since 00:00 UTC: the daily budgets' usage after a restart."""
    wall = now or time.time()
    return {s.key: s.tokens for s in key_stats(db, wall % 86_400.0, wall)}


def parse_window(text: str) -> float:
    """`300`, `90s`, `5m`, `1h` or `7d` -> seconds; SlmError naming --window otherwise."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
    raw = text.strip().lower()
    scale = units.get(raw[-1:])
    number = raw[:-1] if scale is not None else raw
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or math.isinf(seconds):
        raise SlmError(f"--window: {text!r} is not a duration (e.g. 300, 90s, 5m, 1h, 7d)")
    return seconds


def parse_time(text: str, option: str, now: float | None = None) -> float:
    """`2026-11-27`, an ISO time (naive = UTC) or a duration back from now (`7d`, `12h`) -> epoch s."""
    raw = text.strip()
    try:
        stamp = datetime.fromisoformat(raw)
    except ValueError:
        try:
            return (now or time.time()) - parse_window(raw)
        except SlmError:
            raise SlmError(
                f"{option}: {text!r} is not a date (YYYY-MM-DD, an ISO time like "
                "2026-11-27T14:00, or a duration back from now like 7d, 12h)"
            ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


@dataclass
class RouteStats:
    """What one route did over a window: how much its chain's first member answered, and why the
    rest went elsewhere."""

    route: str
    requests: int
    answered: int  # status 200
    first_member: str | None  # the chain's first member, when known
    local: int  # answered by the first member
    reasons: dict[str, int]  # answered requests by route_reason

    @property
    def local_share(self) -> float | None:
        return self.local / self.answered if self.answered and self.first_member else None

    def count(self, prefix: str) -> dict[str, int]:
        """Reasons starting with `prefix` (`escalated:`, `rule:`) by the rest of their name."""
        return {
            r.removeprefix(prefix): n
            for r, n in sorted(self.reasons.items())
            if r.startswith(prefix)
        }


def first_members(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each route's first chain member as the log shows it: who answers its `default` requests."""
    votes: dict[str, dict[str, int]] = {}
    for row in rows:
        if row["route_reason"] == "default" and row["served_by"]:
            by = votes.setdefault(row["route"], {})
            by[row["served_by"]] = by.get(row["served_by"], 0) + 1
    return {route: max(by, key=lambda m: by[m]) for route, by in votes.items()}


def routed_rows(db: Db, since: float) -> list[dict[str, Any]]:
    with reading(db, HINT) as conn:
        return query(
            conn,
            "SELECT route, route_reason, served_by, status FROM requests "
            f"WHERE ts >= ? AND route IS NOT NULL AND {user_traffic(conn)} ORDER BY route",
            (since,),
        )


def route_stats(
    db: Db,
    window_s: float,
    now: float | None = None,
    chains: dict[str, list[str]] | None = None,
) -> list[RouteStats]:
    """Per route over the last `window_s` seconds: requests, answered, the share answered by the
    chain's first member (from `chains`, e.g. the serve config, else from the log) and the reasons."""
    rows = routed_rows(db, (now or time.time()) - window_s)
    firsts = first_members(rows)
    firsts.update({route: chain[0] for route, chain in (chains or {}).items() if chain})
    stats: dict[str, RouteStats] = {}
    for row in rows:
        route = row["route"]
        s = stats.setdefault(route, RouteStats(route, 0, 0, firsts.get(route), 0, {}))
        s.requests += 1
        if row["status"] != 200:
            continue
        s.answered += 1
        s.local += int(s.first_member is not None and row["served_by"] == s.first_member)
        reason = row["route_reason"] or "default"
        s.reasons[reason] = s.reasons.get(reason, 0) + 1
    return list(stats.values())
