"""Alerts: error rate, p95 latency and escalation share over a window. One rule check serves
`slm logs` (over the audit log) and the watcher inside `slm serve` (over the requests it answered).
The watcher keeps each rule's state (pending while `for_s` runs, firing, resolved), sets a gauge per
rule, and writes each firing/resolved change to the log and to the webhook (`serve/webhook.py`).
`slm monitor` sends its drift alerts through the same payload and log lines."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from prometheus_client import Gauge

from slmkit.console import warn
from slmkit.serve.alert_config import AlertingSettings, AlertRule

CHECK_INTERVAL_S = AlertingSettings().check_interval_s

AlertStatus = Literal["firing", "resolved"]


def is_failure(status: int) -> bool:
    """What alerts count as failed: server errors and overload (429), not client mistakes."""
    return status >= 500 or status == 429


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass
class Alert:
    rule: str
    message: str
    kind: str = "error_rate"
    value: float | None = None
    threshold: float | None = None
    model: str | None = None


@dataclass
class Window:
    """What a rule looks at: the requests of its window."""

    requests: int
    failures: int = 0
    latency_p95_s: float | None = None  # over answered (status 200) requests
    answered: int = 0
    escalated: int = 0


def evaluate(rule: AlertRule, requests: int, failures: int) -> Alert | None:
    """The error-rate alert when `failures` out of `requests` in the rule's window make it fire."""
    return evaluate_window(rule, Window(requests, failures))


def evaluate_window(rule: AlertRule, window: Window) -> Alert | None:
    """The rule's alert when its window makes it fire (its condition, without `for_s`)."""
    span = f"over the last {rule.window_s:g} s"
    if rule.kind == "p95_latency":
        p95 = window.latency_p95_s
        if window.answered < rule.min_requests or p95 is None or p95 <= rule.threshold:
            return None
        message = (
            f"p95 latency {p95:.2f} s {span} ({window.answered} answered) "
            f"exceeds {rule.threshold:g} s"
        )
        return _alert(rule, message, p95)
    if window.requests < rule.min_requests:
        return None
    if rule.kind == "escalation_share":
        share = window.escalated / window.requests
        if share <= rule.threshold:
            return None
        message = (
            f"escalation share {share:.1%} {span} ({window.escalated} of {window.requests} "
            f"requests) exceeds {rule.threshold:.1%}"
        )
        return _alert(rule, message, share)
    rate = window.failures / window.requests
    if rate <= rule.threshold:
        return None
    message = (
        f"error rate {rate:.1%} {span} ({window.requests} requests) exceeds {rule.threshold:.1%}"
    )
    return _alert(rule, message, rate)


def _alert(rule: AlertRule, message: str, value: float) -> Alert:
    return Alert(rule.name, message, rule.kind, value, rule.threshold, rule.model)


def alert_payload(
    status: AlertStatus,
    alert: Alert,
    *,
    started_at: float,
    ended_at: float | None,
    server: str,
) -> dict[str, Any]:
    """The webhook's JSON body of one firing/resolved change."""
    return {
        "status": status,
        "rule": alert.rule,
        "kind": alert.kind,
        "message": alert.message,
        "value": alert.value,
        "threshold": alert.threshold,
        "model": alert.model,
        "started_at": started_at,
        "ended_at": ended_at,
        "server": server,
    }


def log_change(status: AlertStatus, alert: Alert) -> None:
    """The log line of a change: `ALERT rule: ...` when it fires, `RESOLVED rule: ...` after."""
    warn(f"{'ALERT' if status == 'firing' else 'RESOLVED'} {alert.rule}: {alert.message}")


def default_server_name(port: int) -> str:
    return f"{socket.gethostname()}:{port}"


@dataclass
class RuleState:
    pending_since: float | None = None
    firing: Alert | None = None
    started_at: float = 0.0


@dataclass
class _Request:
    ts: float
    failed: bool
    latency_s: float | None
    escalated: bool
    model: str | None


class SharedRules(Protocol):
    """Where gateways on one database watch together (`serve/alert_state.py`): the rules'
    windows over every gateway's requests, and the claim that makes one of them announce a
    change."""

    def window(self, rule: AlertRule, now: float) -> Window: ...

    def claim(self, rule: str, status: AlertStatus, now: float, server: str) -> bool: ...

    def close(self) -> None: ...


@dataclass
class AlertWatcher:
    """Checks the rules every `interval_s` over the requests recorded since the server started,
    or, with `shared`, over every gateway's requests, announcing each change once."""

    rules: list[AlertRule]
    gauge: Gauge
    notify: Callable[[dict[str, Any]], None] | None = None
    interval_s: float = CHECK_INTERVAL_S
    server: str = field(default_factory=lambda: default_server_name(0))
    shared: SharedRules | None = None
    _recent: collections.deque[_Request] = field(
        init=False, default_factory=lambda: collections.deque(maxlen=100_000)
    )
    _states: dict[str, RuleState] = field(init=False, default_factory=dict)
    _task: asyncio.Task[None] | None = field(init=False, default=None)

    def record(
        self,
        status: int,
        latency_s: float | None = None,
        escalated: bool = False,
        model: str | None = None,
    ) -> None:
        ok_latency = latency_s if status == 200 else None
        self._recent.append(_Request(time.time(), is_failure(status), ok_latency, escalated, model))

    def window(self, rule: AlertRule, now: float) -> Window:
        """The rule's requests: read from the newest back to the window's start only."""
        since, picked = now - rule.window_s, []
        for r in reversed(self._recent):
            if r.ts < since:
                break
            if rule.model is None or r.model == rule.model:
                picked.append(r)
        latencies = [r.latency_s for r in picked if r.latency_s is not None]
        return Window(
            requests=len(picked),
            failures=sum(r.failed for r in picked),
            latency_p95_s=percentile(latencies, 95),
            answered=len(latencies),
            escalated=sum(r.escalated for r in picked),
        )

    def check(
        self, now: float | None = None, windows: dict[str, Window] | None = None
    ) -> list[Alert]:
        """Set each rule's gauge, log and post its changes; the alerts firing now. `windows`:
        the rules' windows read already (from the shared audit log), else this gateway's own."""
        now = time.time() if now is None else now
        horizon = now - max((rule.window_s for rule in self.rules), default=0.0)
        while self._recent and self._recent[0].ts < horizon:  # older than every rule's window
            self._recent.popleft()
        firing = []
        for rule in self.rules:
            state = self._states.setdefault(rule.name, RuleState())
            window = windows[rule.name] if windows is not None else self.window(rule, now)
            alert = evaluate_window(rule, window)
            if alert is None:
                state.pending_since = None
                if state.firing is not None:
                    self._change("resolved", _resolved(rule, state.firing), state, now, now)
                    state.firing = None
            else:
                if state.pending_since is None:
                    state.pending_since = now
                if now - state.pending_since >= rule.for_s:
                    if state.firing is None:
                        state.started_at = now
                        self._change("firing", alert, state, now, None)
                    state.firing = alert
                    firing.append(alert)
            self.gauge.labels(rule.name).set(1 if state.firing is not None else 0)
        return firing

    def shared_windows(self, now: float) -> dict[str, Window]:
        """Every rule's window over the shared audit log (blocking: run it off the loop)."""
        assert self.shared is not None
        return {rule.name: self.shared.window(rule, now) for rule in self.rules}

    def _change(
        self,
        status: AlertStatus,
        alert: Alert,
        state: RuleState,
        now: float,
        ended_at: float | None,
    ) -> None:
        if self.shared is not None and not self.shared.claim(alert.rule, status, now, self.server):
            return  # another gateway announced this change
        log_change(status, alert)
        if self.notify is not None:
            self.notify(
                alert_payload(
                    status,
                    alert,
                    started_at=state.started_at,
                    ended_at=ended_at,
                    server=self.server,
                )
            )

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="alert-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.shared is not None:
            self.shared.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                now = time.time()
                windows = None
                if self.shared is not None:
                    windows = await asyncio.to_thread(self.shared_windows, now)
                self.check(now, windows)
            except Exception as exc:  # one bad evaluation must not end the watching
                warn(f"alert check failed ({type(exc).__name__}: {exc}); checking again later")


def _resolved(rule: AlertRule, last: Alert) -> Alert:
    """The resolved change carries the rule's last firing value and says it is back."""
    text = {
        "error_rate": f"error rate back within {rule.threshold:.1%}",
        "p95_latency": f"p95 latency back within {rule.threshold:g} s",
        "escalation_share": f"escalation share back within {rule.threshold:.1%}",
    }[rule.kind]
    message = f"{text} over the last {rule.window_s:g} s (was: {last.message})"
    return Alert(rule.name, message, rule.kind, last.value, rule.threshold, rule.model)
