"""OpenAI's HTTP API spoken to one server, a child engine (llama-server, vllm) or a remote endpoint:
the request payload, the SSE stream read as `Delta`s (text, tool-call parts, usage, log-probs),
error bodies, and one retry when a pooled keep-alive connection turns out to be stale.

What an error *means* differs (a child's 500 is the request's fault, a remote's is the remote's),
so each engine passes its own mappers; the transport is shared.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

import httpx

from slmkit.serve.engines.base import Delta
from slmkit.serve.engines.errors import (
    EngineError,
    context_length_exceeded,
    engine_failed,
    invalid_request,
)
from slmkit.serve.engines.request import GenerationRequest

ErrorMapper = Callable[[int, dict[str, Any]], EngineError]  # (HTTP status, JSON body) -> error
FailureMapper = Callable[[Exception], EngineError]  # a broken connection or a timeout -> error
RetryPolicy = Callable[[Exception], bool]  # may a request that got no response be sent again?


def build_payload(request: GenerationRequest, model_name: str) -> dict[str, Any]:
    """The streamed OpenAI request for `request`, addressed to `model_name` on the server."""
    payload: dict[str, Any] = {
        "model": model_name,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": request.max_tokens,
    }
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = getattr(request, name)
        if value is not None:
            payload[name] = value
    if request.seed is not None:
        payload["seed"] = request.seed % 4_294_967_295  # engines take a uint32 seed (-1 = random)
    if request.stop:
        payload["stop"] = request.stop
    if request.messages is not None:
        payload["messages"] = request.messages
    else:
        payload["prompt"] = request.prompt
    payload.update(request.passthrough)
    chat = request.messages is not None
    if chat and payload.get("logprobs") is True and payload.get("top_logprobs") is None:
        payload["top_logprobs"] = 1  # the chosen token's log-prob is wanted, not 20 alternatives
    return payload


def error_fields(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The message and the error object of an error body (`{"error": {...}}` or a bare object)."""
    nested = body.get("error")
    err: dict[str, Any] = nested if isinstance(nested, dict) else body
    return str(err.get("message") or err or "engine error"), err


def context_overflow(
    status: int, err: dict[str, Any], message: str, n_ctx: int | None
) -> EngineError | None:
    """OpenAI's `context_length_exceeded` when the server refused an over-long prompt."""
    if err.get("code") == "context_length_exceeded":  # an OpenAI-shaped server said it already
        return EngineError("context_length", message, param="messages", code=err["code"])
    if err.get("type") == "exceed_context_size_error" or (
        status == 400 and "context" in message.lower()
    ):
        return context_length_exceeded(
            int(err.get("n_prompt_tokens") or 0), int(err.get("n_ctx") or n_ctx or 0)
        )
    return None


def json_or_text(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        return {"message": raw.decode(errors="replace")[:500]}
    return data if isinstance(data, dict) else {"message": str(data)}


class OpenAIHttp:
    """A pooled HTTP client for one OpenAI-compatible server, streaming generations as Deltas."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: httpx.Timeout,
        api_prefix: str = "/v1",
        headers: dict[str, str] | None = None,
    ) -> None:
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
        self.client = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, limits=limits, headers=headers
        )
        self.api_prefix = api_prefix

    def path(self, request: GenerationRequest) -> str:
        endpoint = "/chat/completions" if request.messages is not None else "/completions"
        return self.api_prefix + endpoint

    async def stream(
        self,
        request: GenerationRequest,
        payload: dict[str, Any],
        *,
        on_error: ErrorMapper,
        on_failure: FailureMapper,
        may_retry: RetryPolicy,
    ) -> AsyncGenerator[Delta, None]:
        """POST `payload` and yield its deltas; a non-200 answer goes through `on_error`, a broken
        connection through `on_failure`."""
        for attempt in (1, 2):
            answered = False
            try:
                async with self.client.stream("POST", self.path(request), json=payload) as response:
                    answered = True
                    if response.status_code != 200:
                        raw = await response.aread()
                        raise on_error(response.status_code, json_or_text(raw))
                    chat = request.messages is not None
                    async for delta in parse_sse(response, chat, bool(payload.get("logprobs"))):
                        yield delta
                return
            except (httpx.TransportError, httpx.StreamError) as exc:
                # A pooled keep-alive connection the server closed at the same moment fails before
                # any response: nothing was generated, so one retry on a fresh connection is safe.
                if attempt == 1 and not answered and may_retry(exc):
                    continue
                raise on_failure(exc) from exc

    async def aclose(self) -> None:
        await self.client.aclose()


async def parse_sse(
    response: httpx.Response, chat: bool, logprobs: bool = False
) -> AsyncGenerator[Delta, None]:
    """OpenAI SSE chunks -> Deltas (usage arrives in the last chunk)."""
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue  # blank separators and ": ping" comments
        data = line[6:]
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if "error" in chunk:
            message, err = error_fields(chunk)
            # llama-server sends a refusal of what it was asked with its HTTP status as the code
            if err.get("code") == 400:
                raise invalid_request(message, code="engine_error")
            raise engine_failed(message)
        usage = chunk.get("usage")
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta", {}) if chat else {"content": choice.get("text", "")}
            extra = {
                k: v for k, v in delta.items() if k not in ("content", "role") and v is not None
            }
            yield Delta(
                text=delta.get("content") or "",
                finish_reason=choice.get("finish_reason"),
                extra=extra,
                logprobs=choice_logprobs(choice) if logprobs else [],
            )
        if usage:
            yield Delta(
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
            )


def choice_logprobs(choice: dict[str, Any]) -> list[float]:
    """Per-token log-probs of a chunk's choice: chat's `logprobs.content[].logprob`, or the
    completions endpoint's `logprobs.token_logprobs`."""
    found = choice.get("logprobs")
    if not isinstance(found, dict):
        return []
    content = found.get("content")
    if isinstance(content, list):
        return [
            float(token["logprob"])
            for token in content
            if isinstance(token, dict) and isinstance(token.get("logprob"), int | float)
        ]
    values = found.get("token_logprobs")
    if isinstance(values, list):
        return [float(v) for v in values if isinstance(v, int | float)]
    return []
