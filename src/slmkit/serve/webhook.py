"""Alert delivery: a JSON POST per firing/resolved change to the configured webhook.

Inside `slm serve` the posts go through a queue drained by one background task, so a slow or dead
receiver never holds up a request. Each POST is retried with exponential backoff (`backoff_s`,
doubled per retry) within a per-attempt timeout; outcomes are counted in
`slm_alert_deliveries_total`. The bearer secret is read from its environment variable once and only
ever sent in the Authorization header.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import httpx
from prometheus_client import Counter

from slmkit.console import warn
from slmkit.errors import ConfigError
from slmkit.serve.config import WebhookSettings
from slmkit.serve.engines.remote import display_url

QUEUE_SIZE = 1000
OUTCOMES = ("delivered", "retried", "failed")


def webhook_headers(
    settings: WebhookSettings, field: str = "alerting.webhook.bearer_env"
) -> dict[str, str]:
    """Headers of every POST; ConfigError naming `field` when the bearer variable is unset."""
    headers = {"Content-Type": "application/json", **settings.headers}
    if settings.bearer_env is not None:
        secret = os.environ.get(settings.bearer_env, "").strip()
        if not secret:
            raise ConfigError(
                f"{field}: environment variable {settings.bearer_env} is not set; "
                "export it before starting"
            )
        headers["Authorization"] = f"Bearer {secret}"
    return headers


class WebhookSender:
    """Posts alert payloads to one webhook: `send` queues (never blocks), `deliver` posts now."""

    def __init__(
        self,
        settings: WebhookSettings,
        counter: Counter | None = None,
        field: str = "alerting.webhook.bearer_env",
    ) -> None:
        self.settings = settings
        self.counter = counter
        self._headers = webhook_headers(settings, field)
        for outcome in OUTCOMES:  # every series exists from the start
            self._count(outcome, 0)
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue(QUEUE_SIZE)
        self._task = asyncio.create_task(self._drain(), name="alert-webhook")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

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
                await self.deliver(payload, client)

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
                await asyncio.sleep(self.settings.backoff_s * 2 ** (attempt - 1))
            try:
                response = await client.post(self.settings.url, json=payload, headers=self._headers)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
                continue
            if 200 <= response.status_code < 300:
                self._count("delivered")
                return True
            problem = f"HTTP {response.status_code}"
        self._count("failed")
        warn(
            f"alert webhook {where}: {payload.get('rule')} {payload.get('status')} not delivered "
            f"after {self.settings.retries + 1} attempts ({problem})"
        )
        return False

    def _count(self, outcome: str, by: int = 1) -> None:
        if self.counter is not None:
            self.counter.labels(outcome).inc(by)
