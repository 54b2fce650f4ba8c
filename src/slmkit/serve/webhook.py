"""Alert delivery: a JSON POST per firing/resolved change to the configured webhook.

Inside `slm serve` the posts go through a queue drained by one background task, so a slow or dead
receiver never holds up a request. Each POST is retried with exponential backoff (`backoff_s`,
doubled per retry) within a per-attempt timeout, unless the receiver refused it with a 4xx other
than 408/425/429 (the same payload would be refused again). At shutdown what is queued is still
delivered, for up to 10 s; a delivery that fails unexpectedly never stops the queue. Outcomes are
counted in `slm_alert_deliveries_total`. The bearer secret is read from its environment variable once and only
ever sent in the Authorization header.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from prometheus_client import Counter

from slmkit.config import env_secret
from slmkit.console import warn
from slmkit.serve.alert_config import WebhookSettings
from slmkit.serve.engines.remote import display_url

QUEUE_SIZE = 1000
OUTCOMES = ("delivered", "retried", "failed")
STOP_DRAIN_S = 10.0  # at shutdown, what is queued still goes out for this long
RETRY_4XX = (408, 425, 429)  # the receiver's "try later"; any other 4xx will not change


def retryable_status(status: int) -> bool:
    return status >= 500 or status in RETRY_4XX


def webhook_headers(
    settings: WebhookSettings, field: str = "alerting.webhook.bearer_env"
) -> dict[str, str]:
    """Headers of every POST; ConfigError naming `field` when the bearer variable is unset."""
    headers = {"Content-Type": "application/json", **settings.headers}
    secret = env_secret(settings.bearer_env, field, hint="export it before starting")
    if secret is not None:
        headers["Authorization"] = f"Bearer {secret}"
    return headers


class WebhookSender:
    """Posts alert payloads to one webhook: `send` queues (never blocks), `deliver` posts now."""

    def __init__(
        self,
        settings: WebhookSettings,
        counter: Counter | None = None,
        field: str = "alerting.webhook.bearer_env",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.counter = counter
        self.sleep = sleep  # the backoff's wait (a test records it instead of waiting)
        self._headers = webhook_headers(settings, field)
        for outcome in OUTCOMES:  # every series exists from the start
            self._count(outcome, 0)
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue(QUEUE_SIZE)
        self._task = asyncio.create_task(self._drain(), name="alert-webhook")

    async def stop(self, drain_s: float = STOP_DRAIN_S) -> None:
        """Deliver what is queued (for at most `drain_s`), then stop; what is left is counted
        as failed, with a warning."""
        if self._task is None or self._queue is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        left = self._queue.qsize()
        if left:
            warn(f"alert webhook: {left} alert(s) still queued at shutdown were not delivered")
            self._count("failed", left)

    def send(self, payload: dict[str, Any]) -> None:
        """Queue a payload for the background task (dropped with a warning when the queue is full)."""
        if self._queue is None:
            raise RuntimeError("WebhookSender.start() was not called")
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            warn(f"alert webhook queue full: {payload.get('rule')} {payload.get('status')} dropped")
            self._count("failed")

    async def _drain(self) -> None:
        assert self._queue is not None
        async with httpx.AsyncClient(timeout=self.settings.timeout_s) as client:
            while True:
                payload = await self._queue.get()
                try:
                    await self.deliver(payload, client)
                except Exception as exc:  # the loop outlives any one delivery
                    warn(
                        f"alert webhook: delivery failed unexpectedly ({type(exc).__name__}: {exc})"
                    )
                    self._count("failed")
                finally:
                    self._queue.task_done()

    async def deliver(
        self, payload: dict[str, Any], client: httpx.AsyncClient | None = None
    ) -> bool:
        """POST with retries and backoff; True once the receiver answered 2xx."""
        if client is None:
            async with httpx.AsyncClient(timeout=self.settings.timeout_s) as own:
                return await self.deliver(payload, own)
        where = display_url(self.settings.url)
        problem = ""
        for attempt in range(self.settings.retries + 1):
            if attempt:
                self._count("retried")
                await self.sleep(self.settings.backoff_s * 2 ** (attempt - 1))
            try:
                response = await client.post(self.settings.url, json=payload, headers=self._headers)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
                continue
            if 200 <= response.status_code < 300:
                self._count("delivered")
                return True
            problem = f"HTTP {response.status_code}"
            if not retryable_status(response.status_code):
                break  # the receiver refuses this payload: asking again changes nothing
        self._count("failed")
        warn(
            f"alert webhook {where}: {payload.get('rule')} {payload.get('status')} not delivered "
            f"after {attempt + 1} attempt(s) ({problem})"
        )
        return False

    def _count(self, outcome: str, by: int = 1) -> None:
        if self.counter is not None:
            self.counter.labels(outcome).inc(by)
