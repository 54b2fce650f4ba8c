"""Alert rules watched by two gateways on one PostgreSQL database (a real server): both see every
gateway's requests, and each change (firing, resolved) is announced once, not once a gateway."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from slmkit.serve.alert_config import AlertRule
from slmkit.serve.alert_state import SharedAlerts
from slmkit.serve.alerts import AlertWatcher
from slmkit.serve.audit import AuditLog, AuditRecord
from slmkit.serve.config import AuditSettings

RULE = AlertRule(name="error-rate", error_rate_above=0.2, window_s=60, min_requests=4)


def _watcher(
    server: str, posted: list[dict[str, Any]], shared: SharedAlerts | None
) -> AlertWatcher:
    gauge = Gauge("slm_alert", "firing", ["rule"], registry=CollectorRegistry())
    return AlertWatcher([RULE], gauge, notify=posted.append, server=server, shared=shared)


def _log_requests(url: str, statuses: list[int], ts: float) -> None:
    """Rows as two gateways would write them into the shared audit log."""
    log = AuditLog(AuditSettings(), database=url)
    try:
        for i, status in enumerate(statuses):
            log.record(AuditRecord(f"chatcmpl-{ts}-{i}", ts, None, "m", "chat", status))
        log.flush()
    finally:
        log.close()


def _check(watchers: list[AlertWatcher], now: float) -> list[list[str]]:
    firing = []
    for watcher in watchers:
        windows = watcher.shared_windows(now) if watcher.shared is not None else None
        firing.append([a.rule for a in watcher.check(now, windows)])
    return firing


def test_two_gateways_on_one_database_announce_each_change_once(postgres_url: str) -> None:
    posted: list[dict[str, Any]] = []
    shared = [SharedAlerts(postgres_url), SharedAlerts(postgres_url)]
    watchers = [_watcher(f"gw-{i}", posted, shared[i]) for i in range(2)]
    try:
        now = time.time()
        _log_requests(postgres_url, [200, 200, 503, 503], now - 5)  # 50% errors, both gateways'
        assert _check(watchers, now) == [["error-rate"], ["error-rate"]]  # both see it firing
        assert [p["status"] for p in posted] == ["firing"]  # announced once
        assert _check(watchers, now + 1) == [["error-rate"], ["error-rate"]]
        assert len(posted) == 1  # still firing: nothing new to say
        later = now + 120  # the failures left the window
        _log_requests(postgres_url, [200] * 4, later - 5)
        assert _check(watchers, later) == [[], []]
        assert [p["status"] for p in posted] == ["firing", "resolved"]
        # it fires again later: announced again, once
        _log_requests(postgres_url, [503] * 4, later + 50)
        _check(watchers, later + 55)
        assert [p["status"] for p in posted] == ["firing", "resolved", "firing"]
    finally:
        for one in shared:
            one.close()


def test_gateways_that_watch_alone_each_announce_what_they_saw() -> None:
    """Without a shared database each gateway watches its own requests (the default)."""
    posted: list[dict[str, Any]] = []
    watchers = [_watcher(f"gw-{i}", posted, None) for i in range(2)]
    for watcher in watchers:
        for status in (200, 503, 503, 503):
            watcher.record(status, 0.1)
    assert _check(watchers, time.time()) == [["error-rate"], ["error-rate"]]
    assert [p["server"] for p in posted] == ["gw-0", "gw-1"]
