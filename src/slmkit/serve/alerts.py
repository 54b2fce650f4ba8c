"""Error-rate alerts. One rule check serves `slm logs` (over the audit log) and the watcher inside
`slm serve` (over the requests it answered), which sets a gauge per rule and warns when one starts
firing."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass

from prometheus_client import Gauge

from slmkit.console import warn
from slmkit.serve.config import AlertRule

CHECK_INTERVAL_S = 5.0


def is_failure(status: int) -> bool:
    """What alerts count as failed: server errors and overload (429), not client mistakes."""
    return status >= 500 or status == 429


@dataclass
class Alert:
    rule: str
    message: str


def evaluate(rule: AlertRule, requests: int, failures: int) -> Alert | None:
    """The alert when `failures` out of `requests` in the rule's window make it fire."""
    rate = failures / requests if requests else 0.0
    if requests < rule.min_requests or rate <= rule.error_rate_above:
        return None
    return Alert(
        rule.name,
        f"error rate {rate:.1%} over the last {rule.window_s:g} s ({requests} requests) "
        f"exceeds {rule.error_rate_above:.1%}",
    )


class AlertWatcher:
    """Checks the rules every few seconds over the statuses recorded since the server started."""

    def __init__(self, rules: list[AlertRule], gauge: Gauge) -> None:
        self.rules = rules
        self.gauge = gauge
        self._recent: collections.deque[tuple[float, bool]] = collections.deque(maxlen=100_000)
        self._firing: dict[str, bool] = {}
        self._task: asyncio.Task[None] | None = None

    def record(self, status: int) -> None:
        self._recent.append((time.time(), is_failure(status)))

    def check(self, now: float | None = None) -> list[Alert]:
        """Set each rule's gauge; warn for the rules that just started firing."""
        now = time.time() if now is None else now
        alerts = []
        for rule in self.rules:
            window = [failed for ts, failed in self._recent if ts >= now - rule.window_s]
            alert = evaluate(rule, len(window), sum(window))
            self.gauge.labels(rule.name).set(1 if alert else 0)
            if alert is not None:
                alerts.append(alert)
                if not self._firing.get(rule.name):
                    warn(f"ALERT {alert.rule}: {alert.message}")
            self._firing[rule.name] = alert is not None
        return alerts

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="alert-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            self.check()
