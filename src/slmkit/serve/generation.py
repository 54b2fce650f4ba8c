"""Generating through an engine: deltas gathered into an `Outcome` under the request deadline and
the repetition guard, the one retry of a looping answer, and fitting a chat into the context.
`RequestContext` carries one request through the gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import Any

from slmkit.serve import api_errors
from slmkit.serve.api_errors import ApiError
from slmkit.serve.audit import AuditRecord
from slmkit.serve.config import ServeConfig
from slmkit.serve.engines.base import Delta, Engine
from slmkit.serve.engines.errors import EngineError
from slmkit.serve.engines.request import GenerationRequest
from slmkit.serve.guards import (
    CachedResponse,
    ContextOutcome,
    RepetitionDetector,
    prune_messages,
    summarize_messages,
    summary_prompt,
)
from slmkit.serve.key_limits import KeyTicket
from slmkit.serve.metrics import GatewayMetrics

SUMMARY_MAX_TOKENS = 96


@dataclass
class Outcome:
    """What came out of one generation (accumulated from deltas)."""

    text_parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    text_deltas: int = 0
    ttft: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    repeated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_cache(cls, cached: CachedResponse, ttft: float) -> Outcome:
        return cls(
            [cached.text],
            cached.finish_reason,
            cached.prompt_tokens,
            cached.completion_tokens,
            extra=dict(cached.extra),
            ttft=ttft,
        )

    def to_cache(self) -> CachedResponse:
        return CachedResponse(
            self.text,
            self.finish_reason or "stop",
            self.prompt_tokens or 0,
            self.tokens_out(),
            self.extra,
        )

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def tokens_out(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else self.text_deltas

    def absorb(self, delta: Delta, started: float) -> None:
        if delta.text:
            now = time.perf_counter()
            if self.ttft is None:
                self.ttft, self.first_token_at = now - started, now
            self.last_token_at = now
            self.text_parts.append(delta.text)
            self.text_deltas += 1
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
        if delta.prompt_tokens is not None:
            self.prompt_tokens = delta.prompt_tokens
        if delta.completion_tokens is not None:
            self.completion_tokens = delta.completion_tokens
        if delta.extra.get("tool_calls"):
            _merge_tool_calls(self.extra.setdefault("tool_calls", []), delta.extra["tool_calls"])


def _merge_tool_calls(into: list[dict[str, Any]], parts: list[dict[str, Any]]) -> None:
    for part in parts:
        index = part.get("index", 0)
        while len(into) <= index:
            into.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        call = into[index]
        call["id"] = part.get("id") or call["id"]
        fn = part.get("function") or {}
        call["function"]["name"] += fn.get("name") or ""
        call["function"]["arguments"] += fn.get("arguments") or ""


@dataclass
class RequestContext:
    """One generation request on its way through the gateway, and how it ended."""

    rec: AuditRecord
    gen: GenerationRequest
    started: float  # time.perf_counter() when the request came in
    include_usage: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    outcome: Outcome | None = None  # set once the engine or the cache answered
    status: int = 200  # a stream says 499 until its last event is sent
    error: ApiError | None = None  # an error that ended a stream after its headers
    key_ticket: KeyTicket | None = None  # its claim on a per-key limit, settled in `_finish`
    finished: bool = False  # `_finish` ran: metrics and the audit row are written once
    stream_settles: bool = False  # a stream started: its close settles the request, not the handler


def prompt_text(gen: GenerationRequest) -> str:
    if gen.messages is None:
        return gen.prompt or ""
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in gen.messages)


async def next_delta(
    events: AsyncGenerator[Delta, None], deadline: float, timeout_s: float
) -> Delta | None:
    """The next delta, None at the end; ApiError (408) past the request deadline, and an
    engine's error as the API answers it."""
    remaining = deadline - time.monotonic()
    try:
        if remaining <= 0:
            raise asyncio.TimeoutError
        if hasattr(asyncio, "timeout"):  # Python >= 3.11: no extra task per token
            async with asyncio.timeout(remaining):
                return await events.__anext__()
        return await asyncio.wait_for(events.__anext__(), remaining)
    except StopAsyncIteration:
        return None
    except EngineError as exc:
        raise api_errors.from_engine(exc) from exc
    except (asyncio.TimeoutError, TimeoutError) as exc:
        raise api_errors.request_timeout(timeout_s) from exc


def request_deadline(started: float, timeout_s: float) -> float:
    """The request's deadline on the monotonic clock: `started` (perf_counter) + the timeout. One
    per request, shared by everything that answers it (a retry, another replica, the next member
    of a route's chain)."""
    return time.monotonic() + timeout_s - (time.perf_counter() - started)


async def close_events(events: AsyncGenerator[Delta, None]) -> None:
    """Stop an engine's generation now (every `Engine.generate` is an async generator)."""
    await events.aclose()


async def collect(
    engine: Engine,
    gen: GenerationRequest,
    started: float,
    config: ServeConfig,
    metrics: GatewayMetrics | None = None,
) -> Outcome:
    """The whole answer, cut short at a repetition loop; 408 past `limits.request_timeout_s`.

    The deadline is the request's (`started` + the timeout), shared by everything that answers
    it: a retry, another replica, the next member of a route's chain.

    Nothing of it has reached the client yet, so when a replica fails part-way (killed while
    answering) the request is asked once more, within the same deadline: the replica pool leaves
    the failed replica out (`gen.avoid`) and another one answers from the start.
    """
    timeout_s = config.limits.request_timeout_s
    deadline = request_deadline(started, timeout_s)
    avoided = len(gen.avoid)
    try:
        return await _collect_once(engine, gen, started, deadline, timeout_s, config)
    except ApiError as exc:
        if len(gen.avoid) == avoided or not exc.retryable or time.monotonic() >= deadline:
            raise  # no replica to leave out, the request's own fault, or no time left
        if metrics is not None:
            metrics.failovers.labels(gen.model_id).inc()
        return await _collect_once(engine, gen, started, deadline, timeout_s, config)


async def _collect_once(
    engine: Engine,
    gen: GenerationRequest,
    started: float,
    deadline: float,
    timeout_s: float,
    config: ServeConfig,
) -> Outcome:
    detector = RepetitionDetector(config.repetition)
    outcome = Outcome()
    events = engine.generate(gen)
    try:
        while (delta := await next_delta(events, deadline, timeout_s)) is not None:
            outcome.absorb(delta, started)
            if detector.feed(delta.text):
                outcome.repeated, outcome.finish_reason = True, "stop"
                break
    finally:
        await close_events(events)
    return outcome


async def generate_with_retry(
    engine: Engine,
    gen: GenerationRequest,
    started: float,
    config: ServeConfig,
    metrics: GatewayMetrics,
) -> Outcome:
    """`collect`, and once more with `repetition.retry_penalty` when the answer looped."""
    outcome = await collect(engine, gen, started, config, metrics)
    if outcome.repeated:
        metrics.repetition.labels(gen.model_id, "stopped").inc()
        metrics.repetition.labels(gen.model_id, "retried").inc()
        retry = replace(gen, repeat_penalty=config.repetition.retry_penalty)
        outcome = await collect(engine, retry, started, config, metrics)
        if outcome.repeated:
            metrics.repetition.labels(gen.model_id, "stopped").inc()
    return outcome


async def fit_context(
    engine: Engine, gen: GenerationRequest, policy: str, config: ServeConfig
) -> ContextOutcome | None:
    """Prune or summarize a chat longer than the engine's context; None when nothing was checked
    (policy `reject`, or an engine that does not tell its context size): the engine itself then
    rejects an over-long prompt before streaming starts."""
    n_ctx = engine.context_size()
    if policy == "reject" or n_ctx is None or gen.messages is None:
        return None

    async def count(messages: list[dict[str, Any]]) -> int | None:
        return await engine.count_prompt_tokens(replace(gen, messages=messages))

    async def summarize(turns: list[dict[str, Any]]) -> str:
        request = GenerationRequest(
            model_id=gen.model_id,
            messages=summary_prompt(turns),
            prompt=None,
            max_tokens=SUMMARY_MAX_TOKENS,
            stream=True,
            temperature=0.0,
        )
        return (await collect(engine, request, time.perf_counter(), config)).text

    budget = max(1, n_ctx - min(gen.max_tokens, n_ctx // 2))
    if policy == "prune":
        return await prune_messages(gen.messages, budget, n_ctx, count)
    return await summarize_messages(gen.messages, budget, n_ctx, count, summarize)
