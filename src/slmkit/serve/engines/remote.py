"""`RemoteEngine`: a remote OpenAI-compatible endpoint served under a local model id.

No child process: requests go to `upstream.url` with the key from `upstream.api_key_env` (read once
at start-up, sent only in the Authorization header, masked in anything echoed back), the remote
model name substituted. A failed call is a 502 (bad answer, unreachable), 503 (overloaded) or 504
(timed out); usage x prices is counted in `slm_upstream_cost_usd`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from slmkit.config import env_secret
from slmkit.serve.engines.base import Delta, EngineState
from slmkit.serve.engines.errors import (
    EngineError,
    invalid_request,
    upstream_failed,
    upstream_rate_limited,
)
from slmkit.serve.engines.openai_http import (
    OpenAIHttp,
    build_payload,
    context_overflow,
    error_fields,
)
from slmkit.serve.engines.request import GenerationRequest
from slmkit.serve.engines.settings import UpstreamSettings

MASK = "***"
# Requests at the endpoint counted as decoding at once (for slm_queue_depth); a remote API's real
# capacity is unknown and large.
REMOTE_CAPACITY = 64


def read_api_key(settings: UpstreamSettings, field: str) -> str | None:
    """The endpoint's key from its environment variable; ConfigError naming `field` when unset."""
    return env_secret(
        settings.api_key_env, f"{field}.api_key_env", hint="export it before `slm serve`"
    )


def display_url(url: str) -> str:
    """The URL without any `user:password@` part."""
    return re.sub(r"//[^/@]*@", "//", url)


class RemoteEngine:
    """Streams generations from a remote OpenAI-compatible API."""

    kind = "remote"

    def __init__(
        self,
        model_id: str,
        settings: UpstreamSettings,
        api_key: str | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.model_ids = [model_id]
        self.model_id = model_id
        self.settings = settings
        self.remote_model = settings.model or model_id
        self._secret = api_key
        self._state: EngineState = "stopped"
        self._cost: Any = None  # the model's slm_upstream_cost_usd child, once metrics attach
        self.http = OpenAIHttp(
            settings.url,
            api_prefix="",
            headers={
                **(headers or {}),
                **({"Authorization": f"Bearer {api_key}"} if api_key else {}),
            }
            or None,
            timeout=httpx.Timeout(settings.timeout_s, connect=min(10.0, settings.timeout_s)),
        )

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def capacity(self) -> int:
        return REMOTE_CAPACITY

    @property
    def restarts(self) -> int:
        return 0

    def attach_metrics(self, metrics: Any) -> None:
        """`metrics`: the gateway's, whose `upstream_cost` counter is labelled by model id."""
        self._cost = metrics.upstream_cost.labels(self.model_id)
        self._cost.inc(0)  # the series exists from the start

    async def start(self) -> None:
        self._state = "ready"  # nothing to spawn; a dead endpoint shows per request (502)

    async def stop(self) -> None:
        await self.http.aclose()
        self._state = "stopped"

    async def health(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "engine": self.kind,
            "state": self._state,
            "url": display_url(self.settings.url),
            "model": self.remote_model,
        }

    async def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        return None

    def context_size(self) -> int | None:
        return None  # unknown: the endpoint itself refuses an over-long prompt

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        if self._state != "ready":
            raise upstream_failed(self.model_id, self._state, "upstream_unavailable")
        events = self.http.stream(
            request,
            build_payload(request, self.remote_model),
            on_error=self.map_error,
            on_failure=self.map_failure,
            may_retry=lambda exc: not isinstance(exc, httpx.TimeoutException),
        )
        try:
            async with contextlib.aclosing(events):
                async for delta in events:
                    if delta.prompt_tokens is not None or delta.completion_tokens is not None:
                        self.charge(delta.prompt_tokens or 0, delta.completion_tokens or 0)
                    yield delta
        except EngineError as exc:
            raise self.masked(exc) from None

    def charge(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Add the cost of one answer's usage to `slm_upstream_cost_usd`; returns it."""
        s = self.settings
        cost = (
            prompt_tokens * s.price_in_per_mtok + completion_tokens * s.price_out_per_mtok
        ) / 1e6
        if self._cost is not None and cost > 0:
            self._cost.inc(cost)
        return cost

    def map_error(self, status: int, body: dict[str, Any]) -> EngineError:
        """The endpoint's error answer in our terms: the client's fault stays `bad_request`, the
        endpoint's (or the gateway's credentials) becomes an `upstream_*` error."""
        message, err = error_fields(body)
        message = self.mask(message)[:300]
        overflow = context_overflow(status, err, message, None)
        if overflow is not None:
            return overflow
        if status in (400, 422):
            return invalid_request(
                f"the upstream rejected the request: {message}", code="upstream_rejected_request"
            )
        if status in (401, 403):
            who = self.settings.api_key_env or "no key configured"
            return upstream_failed(
                self.model_id, f"it refused the gateway's credentials ({who}): {status}"
            )
        if status == 404:
            return upstream_failed(
                self.model_id, f"it has no model {self.remote_model!r} or no such path: 404"
            )
        if status == 429:
            return upstream_rate_limited(self.model_id)
        if status in (408, 504):
            return upstream_failed(self.model_id, f"it timed out: {status}", "upstream_timeout")
        if status == 503:
            return upstream_failed(
                self.model_id, f"it is unavailable: {message}", "upstream_unavailable"
            )
        return upstream_failed(self.model_id, f"it answered {status}: {message}")

    def map_failure(self, exc: Exception) -> EngineError:
        if isinstance(exc, httpx.TimeoutException):
            return upstream_failed(
                self.model_id,
                f"no answer within {self.settings.timeout_s:g} s",
                "upstream_timeout",
            )
        what = "unreachable" if isinstance(exc, httpx.ConnectError) else "connection broke"
        return upstream_failed(self.model_id, f"{what}: {type(exc).__name__}")

    def mask(self, text: str) -> str:
        return text.replace(self._secret, MASK) if self._secret else text

    def masked(self, exc: EngineError) -> EngineError:
        """The same error with any echo of the key masked (a remote may quote what it was sent)."""
        if not self._secret or self._secret not in exc.message:
            return exc
        return exc.with_message(self.mask(exc.message))
