"""The generation flow of the gateway: model routing, admission (429), context policy, cache,
streaming with the output filter and repetition guard, metrics and the audit record.

Everything that can fail is decided before the first byte of the response: a stream is only
answered once the engine has produced its first event.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from slmkit.console import warn
from slmkit.serve import api_errors
from slmkit.serve.admission import Admission, AdmissionSlot
from slmkit.serve.api_errors import ApiError
from slmkit.serve.audit import AuditLog, AuditRecord
from slmkit.serve.config import ServeConfig
from slmkit.serve.engines.base import Delta, Engine
from slmkit.serve.guards import (
    CachedResponse,
    RepetitionDetector,
    ResponseCache,
    StreamingFilter,
    prune_messages,
    summarize_messages,
    summary_prompt,
)
from slmkit.serve.metrics import GatewayMetrics
from slmkit.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    FeedbackRequest,
    GenerationRequest,
    generation_request,
)

FINGERPRINT = "slmkit"


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


class GuardedStream(StreamingResponse):
    """A streaming response whose clean-up runs even if the client left before it started."""

    def __init__(
        self, content: AsyncIterator[bytes], on_close: Any, headers: dict[str, str]
    ) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._content = content
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._content.aclose()  # type: ignore[attr-defined]
            await self._on_close()


class Gateway:
    """Routes OpenAI requests to engines; owns metrics, audit, cache and guards."""

    def __init__(
        self, config: ServeConfig, engines: dict[str, Engine], embedder: Any = None
    ) -> None:
        self.config = config
        self.engines = engines
        self.embedder = embedder
        self.metrics = GatewayMetrics()
        self.audit: AuditLog | None = None
        self.cache = ResponseCache(config.cache.max_entries) if config.cache.enabled else None
        self.admission = Admission(engines, config.limits.max_queue, self.metrics)
        self.created = int(time.time())
        self._recent: collections.deque[tuple[float, bool]] = collections.deque(maxlen=100_000)
        self._alert_task: asyncio.Task[None] | None = None
        for engine in {id(e): e for e in engines.values()}.values():
            if hasattr(engine, "on_restart"):
                engine.on_restart = self._on_engine_restart

    # -- lifecycle --------------------------------------------------------------------------
    def unique_engines(self) -> list[Engine]:
        return list({id(e): e for e in self.engines.values()}.values())

    async def start(self) -> None:
        if self.config.audit.enabled:
            self.audit = AuditLog(self.config.audit)
        started: list[Engine] = []
        try:
            for engine in self.unique_engines():
                await engine.start()
                started.append(engine)
        except BaseException:
            for engine in started:
                await engine.stop()
            raise
        self._alert_task = asyncio.create_task(self._watch_alerts())

    async def stop(self) -> None:
        if self._alert_task is not None:
            self._alert_task.cancel()
        await asyncio.gather(
            *(engine.stop() for engine in self.unique_engines()), return_exceptions=True
        )
        if self.audit is not None:
            self.audit.close()

    def _on_engine_restart(self, model_id: str) -> None:
        self.metrics.engine_restarts.labels(model_id).inc()

    # -- routing and admission ----------------------------------------------------------------
    def _engine(self, model: str) -> Engine:
        engine = self.engines.get(model)
        if engine is None:
            raise api_errors.model_not_found(model)
        return engine

    def _max_tokens(self, body: ChatCompletionRequest | CompletionRequest) -> int:
        # Only chat has max_completion_tokens; on /v1/completions it is an unvalidated extra field.
        chat_limit = body.max_completion_tokens if isinstance(body, ChatCompletionRequest) else None
        asked = chat_limit or body.max_tokens
        return min(
            asked or self.config.limits.default_max_tokens, self.config.limits.max_tokens_cap
        )

    # -- the generation endpoints ---------------------------------------------------------------
    async def handle_generation(
        self, body: ChatCompletionRequest | CompletionRequest, request: Request, endpoint: str
    ) -> Response:
        started = time.perf_counter()
        prefix = "chatcmpl-" if endpoint == "chat" else "cmpl-"
        rec = AuditRecord(
            id=prefix + uuid.uuid4().hex[:24],
            ts=time.time(),
            key_id=request.state.key_id,
            model=body.model,
            endpoint=endpoint,
            status=200,
            stream=body.stream,
        )
        try:
            engine = self._engine(body.model)
            gen = generation_request(body, body.model, self._max_tokens(body))
            rec.prompt_text = _prompt_text(gen)
            slot = self.admission.admit(body.model)
        except ApiError as exc:
            self._finish(rec, started, None, exc)
            raise
        headers = {"x-request-id": rec.id}
        with slot:  # released on the way out, unless a stream took it over
            try:
                return await self._answer(engine, gen, body, rec, started, headers, slot)
            except ApiError as exc:
                self._finish(rec, started, None, exc)
                raise

    async def _answer(
        self,
        engine: Engine,
        gen: GenerationRequest,
        body: ChatCompletionRequest | CompletionRequest,
        rec: AuditRecord,
        started: float,
        headers: dict[str, str],
        slot: AdmissionSlot,
    ) -> Response:
        """Answer an admitted request; a stream takes the admission slot over until it ends."""
        if gen.messages is not None:
            policy = getattr(body, "context_policy", None) or self.config.limits.context_policy
            await self._fit_context(engine, gen, policy, headers)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        cached = self._cache_lookup(gen, headers)
        if cached is not None:
            outcome = Outcome(
                [cached.text],
                cached.finish_reason,
                cached.prompt_tokens,
                cached.completion_tokens,
                extra=dict(cached.extra),
                ttft=time.perf_counter() - started,
            )
            rec.cached = True
            if gen.stream:
                return self._replay_stream(outcome, gen, rec, started, headers, include_usage, slot)
            return self._json_response(outcome, gen, rec, started, headers)
        if gen.stream:
            return await self._start_stream(engine, gen, rec, started, headers, include_usage, slot)
        outcome = await self._generate_with_retry(engine, gen, started)
        self._cache_store(gen, outcome)
        return self._json_response(outcome, gen, rec, started, headers)

    def _json_response(
        self,
        outcome: Outcome,
        gen: GenerationRequest,
        rec: AuditRecord,
        started: float,
        headers: dict[str, str],
    ) -> JSONResponse:
        text = StreamingFilter(self.config.output_filter)
        content = text.filter_all(outcome.text)
        if text.redactions:
            self.metrics.redactions.labels(gen.model_id).inc(text.redactions)
        rec.response_text = content
        self._finish(rec, started, outcome, None)
        return JSONResponse(
            _completion_body(rec.id, gen, content, outcome, self.created), headers=headers
        )

    # -- context policy ---------------------------------------------------------------------------
    async def _fit_context(
        self, engine: Engine, gen: GenerationRequest, policy: str, headers: dict[str, str]
    ) -> None:
        n_ctx = engine.context_size()
        if policy == "reject" or n_ctx is None or gen.messages is None:
            return  # the engine itself rejects an over-long prompt before streaming starts

        async def count(messages: list[dict[str, Any]]) -> int | None:
            return await engine.count_prompt_tokens(replace(gen, messages=messages))

        budget = max(1, n_ctx - min(gen.max_tokens, n_ctx // 2))
        if policy == "prune":
            outcome = await prune_messages(gen.messages, budget, n_ctx, count)
        else:
            outcome = await summarize_messages(
                gen.messages,
                budget,
                n_ctx,
                count,
                lambda turns: self._summarize(engine, gen.model_id, turns),
            )
        if outcome.action != "none":
            gen.messages = outcome.messages
            headers[f"x-slm-context-{outcome.action}"] = str(outcome.dropped)
            self.metrics.context_actions.labels(gen.model_id, outcome.action).inc()

    async def _summarize(self, engine: Engine, model_id: str, turns: list[dict[str, Any]]) -> str:
        request = GenerationRequest(
            model_id=model_id,
            messages=summary_prompt(turns),
            prompt=None,
            max_tokens=96,
            stream=True,
            temperature=0.0,
        )
        outcome = await self._collect(engine, request, time.perf_counter())
        return outcome.text

    # -- cache --------------------------------------------------------------------------------------
    def _cache_lookup(
        self, gen: GenerationRequest, headers: dict[str, str]
    ) -> CachedResponse | None:
        if self.cache is None or not gen.deterministic:
            return None
        hit = self.cache.get(gen.cache_key())
        self.metrics.cache.labels(gen.model_id, "hit" if hit else "miss").inc()
        headers["x-slm-cache"] = "hit" if hit else "miss"
        return hit

    def _cache_store(self, gen: GenerationRequest, outcome: Outcome) -> None:
        if self.cache is None or not gen.deterministic or outcome.repeated:
            return
        self.cache.put(
            gen.cache_key(),
            CachedResponse(
                outcome.text,
                outcome.finish_reason or "stop",
                outcome.prompt_tokens or 0,
                outcome.tokens_out(),
                outcome.extra,
            ),
        )

    # -- non-streaming generation ------------------------------------------------------------------
    async def _generate_with_retry(
        self, engine: Engine, gen: GenerationRequest, started: float
    ) -> Outcome:
        outcome = await self._collect(engine, gen, started)
        if outcome.repeated:
            self.metrics.repetition.labels(gen.model_id, "stopped").inc()
            self.metrics.repetition.labels(gen.model_id, "retried").inc()
            retry = replace(gen, repeat_penalty=self.config.repetition.retry_penalty)
            outcome = await self._collect(engine, retry, started)
            if outcome.repeated:
                self.metrics.repetition.labels(gen.model_id, "stopped").inc()
        return outcome

    async def _collect(self, engine: Engine, gen: GenerationRequest, started: float) -> Outcome:
        deadline = time.monotonic() + self.config.limits.request_timeout_s
        detector = RepetitionDetector(self.config.repetition)
        outcome = Outcome()
        events = engine.generate(gen)
        try:
            while (
                delta := await _next_delta(events, deadline, self.config.limits.request_timeout_s)
            ) is not None:
                outcome.absorb(delta, started)
                if detector.feed(delta.text):
                    outcome.repeated, outcome.finish_reason = True, "stop"
                    break
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        return outcome

    # -- streaming --------------------------------------------------------------------------------
    async def _start_stream(
        self,
        engine: Engine,
        gen: GenerationRequest,
        rec: AuditRecord,
        started: float,
        headers: dict[str, str],
        include_usage: bool,
        slot: AdmissionSlot,
    ) -> Response:
        deadline = time.monotonic() + self.config.limits.request_timeout_s
        events = engine.generate(gen)
        try:
            first = await _next_delta(events, deadline, self.config.limits.request_timeout_s)
        except BaseException:
            await events.aclose()  # type: ignore[attr-defined]
            raise
        state: dict[str, Any] = {"outcome": Outcome(), "status": 499, "error": None}
        body = self._stream_body(first, events, gen, rec, started, deadline, include_usage, state)

        async def on_close() -> None:
            await events.aclose()  # type: ignore[attr-defined]
            slot.release()
            outcome: Outcome = state["outcome"]
            rec.response_text = outcome.text
            self._finish(rec, started, outcome, state["error"], status=int(state["status"]))
            if state["status"] == 200:
                self._cache_store(gen, outcome)

        slot.hand_over()
        return GuardedStream(body, on_close, headers)

    async def _stream_body(
        self,
        first: Delta | None,
        events: AsyncIterator[Delta],
        gen: GenerationRequest,
        rec: AuditRecord,
        started: float,
        deadline: float,
        include_usage: bool,
        state: dict[str, Any],
    ) -> AsyncIterator[bytes]:
        chunk = _ChunkWriter(rec.id, gen, self.created)
        outcome: Outcome = state["outcome"]
        text_filter = StreamingFilter(self.config.output_filter)
        detector = RepetitionDetector(self.config.repetition)
        yield chunk.first()
        delta = first
        while delta is not None:
            outcome.absorb(delta, started)
            piece = text_filter.feed(delta.text) if delta.text else ""
            if piece or delta.extra:
                yield chunk.content(piece, delta.extra)
            if detector.feed(delta.text):
                outcome.repeated, outcome.finish_reason = True, "stop"
                self.metrics.repetition.labels(gen.model_id, "stopped").inc()
                break
            try:
                delta = await _next_delta(events, deadline, self.config.limits.request_timeout_s)
            except ApiError as exc:
                state["status"], state["error"] = exc.status, exc
                yield b"data: " + exc.body_bytes() + b"\n\n"
                return
        tail = text_filter.flush()
        if tail:
            yield chunk.content(tail, {})
        if text_filter.redactions:
            self.metrics.redactions.labels(gen.model_id).inc(text_filter.redactions)
        yield chunk.finish(outcome.finish_reason or "stop")
        if include_usage:
            yield chunk.usage(outcome.prompt_tokens or 0, outcome.tokens_out())
        yield b"data: [DONE]\n\n"
        state["status"] = 200

    def _replay_stream(
        self,
        outcome: Outcome,
        gen: GenerationRequest,
        rec: AuditRecord,
        started: float,
        headers: dict[str, str],
        include_usage: bool,
        slot: AdmissionSlot,
    ) -> Response:
        chunk = _ChunkWriter(rec.id, gen, self.created)
        content = StreamingFilter(self.config.output_filter).filter_all(outcome.text)

        async def body() -> AsyncIterator[bytes]:
            yield chunk.first()
            yield chunk.content(content, outcome.extra)
            yield chunk.finish(outcome.finish_reason or "stop")
            if include_usage:
                yield chunk.usage(outcome.prompt_tokens or 0, outcome.tokens_out())
            yield b"data: [DONE]\n\n"

        async def on_close() -> None:
            slot.release()
            rec.response_text = content
            self._finish(rec, started, outcome, None)

        slot.hand_over()
        return GuardedStream(body(), on_close, headers)

    # -- bookkeeping --------------------------------------------------------------------------------
    def _finish(
        self,
        rec: AuditRecord,
        started: float,
        outcome: Outcome | None,
        error: ApiError | None,
        status: int | None = None,
    ) -> None:
        latency = time.perf_counter() - started
        rec.status = status if status is not None else (error.status if error else 200)
        rec.error_code = error.code if error else None
        rec.latency_s = latency
        model = rec.model if rec.model in self.engines else "unknown"
        if outcome is not None:
            rec.prompt_tokens, rec.completion_tokens = outcome.prompt_tokens, outcome.tokens_out()
            rec.ttft_s = outcome.ttft
            self._observe_tokens(model, outcome, rec.cached)
        self.metrics.requests.labels(rec.endpoint, model, str(rec.status)).inc()
        self.metrics.latency.labels(rec.endpoint, model).observe(latency)
        self._recent.append((time.time(), rec.status >= 500 or rec.status == 429))
        if self.audit is not None:
            self.audit.record(rec)

    def _observe_tokens(self, model: str, outcome: Outcome, cached: bool) -> None:
        if outcome.prompt_tokens:
            self.metrics.prompt_tokens.labels(model).inc(outcome.prompt_tokens)
        tokens = outcome.tokens_out()
        if tokens:
            self.metrics.completion_tokens.labels(model).inc(tokens)
        if outcome.ttft is not None:
            self.metrics.ttft.labels(model).observe(outcome.ttft)
        if (
            not cached
            and tokens > 1
            and outcome.first_token_at is not None
            and outcome.last_token_at is not None
        ):
            decode_span = outcome.last_token_at - outcome.first_token_at
            self.metrics.tpot.labels(model).observe(decode_span / (tokens - 1))

    # -- other endpoints -------------------------------------------------------------------------------
    def list_models(self) -> dict[str, Any]:
        data = [self._card(model_id) for model_id in self.engines]
        if self.embedder is not None:
            data.append(self._card(self.config.embeddings.model_id, "embeddings"))
        return {"object": "list", "data": data}

    def _card(self, model_id: str, kind: str | None = None) -> dict[str, Any]:
        engine = kind or self.engines[model_id].kind
        return {
            "id": model_id,
            "object": "model",
            "created": self.created,
            "owned_by": f"slmkit:{engine}",
        }

    def model_card(self, model_id: str) -> dict[str, Any]:
        if model_id in self.engines:
            return self._card(model_id)
        if self.embedder is not None and model_id == self.config.embeddings.model_id:
            return self._card(model_id, "embeddings")
        raise api_errors.model_not_found(model_id)

    async def health(self) -> dict[str, Any]:
        engines = [await engine.health() for engine in self.unique_engines()]
        for engine in self.unique_engines():
            for model_id in engine.model_ids:
                self.metrics.engine_up.labels(model_id).set(1 if engine.state == "ready" else 0)
        ok = all(e["state"] == "ready" for e in engines)
        return {"status": "ok" if ok else "degraded", "engines": engines}

    def render_metrics(self) -> bytes:
        for engine in self.unique_engines():
            for model_id in engine.model_ids:
                self.metrics.engine_up.labels(model_id).set(1 if engine.state == "ready" else 0)
        return self.metrics.render()

    async def feedback(self, body: FeedbackRequest) -> dict[str, Any]:
        if self.audit is None:
            raise ApiError(
                400, "feedback needs the audit log (audit.enabled: true)", code="audit_disabled"
            )
        stored = await asyncio.to_thread(
            self.audit.add_feedback, body.id, body.rating, body.correction
        )
        if not stored:
            raise ApiError(
                404,
                f"No completion with id `{body.id}` in the audit log.",
                param="id",
                code="not_found",
            )
        self.metrics.feedback.labels("up" if body.rating > 0 else "down").inc()
        return {"object": "feedback", "id": body.id, "stored": True}

    async def embed(self, body: EmbeddingRequest, request: Request) -> dict[str, Any]:
        if self.embedder is None or body.model != self.config.embeddings.model_id:
            raise api_errors.model_not_found(body.model)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        vectors, tokens = await asyncio.to_thread(self.embedder.embed, texts)
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    # -- alerts ---------------------------------------------------------------------------------------
    async def _watch_alerts(self) -> None:
        firing: dict[str, bool] = {}
        while True:
            await asyncio.sleep(5.0)
            now = time.time()
            for rule in self.config.alerts:
                window = [failed for ts, failed in self._recent if ts >= now - rule.window_s]
                rate = sum(window) / len(window) if window else 0.0
                fires = len(window) >= rule.min_requests and rate > rule.error_rate_above
                self.metrics.alerts.labels(rule.name).set(1 if fires else 0)
                if fires and not firing.get(rule.name):
                    warn(
                        f"ALERT {rule.name}: error rate {rate:.1%} over the last {rule.window_s:g} s "
                        f"({len(window)} requests) exceeds {rule.error_rate_above:.1%}"
                    )
                firing[rule.name] = fires


async def _next_delta(
    events: AsyncIterator[Delta], deadline: float, timeout_s: float
) -> Delta | None:
    """The next delta, None at the end; ApiError (408) past the request deadline."""
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
    except (asyncio.TimeoutError, TimeoutError) as exc:
        raise api_errors.request_timeout(timeout_s) from exc


def _prompt_text(gen: GenerationRequest) -> str:
    if gen.messages is None:
        return gen.prompt or ""
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in gen.messages)


class _ChunkWriter:
    """OpenAI SSE chunks for one stream (chat.completion.chunk or text_completion)."""

    def __init__(self, request_id: str, gen: GenerationRequest, created: int) -> None:
        self.chat = gen.messages is not None
        self.head = {
            "id": request_id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": created,
            "model": gen.model_id,
            "system_fingerprint": FINGERPRINT,
        }

    def _choice(
        self, content: str | None, extra: dict[str, Any], finish: str | None, role: bool = False
    ) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": content or "", "logprobs": None, "finish_reason": finish}
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if content is not None:
            delta["content"] = content
        delta.update(extra)
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def _sse(self, choices: list[dict[str, Any]], **more: Any) -> bytes:
        from slmkit.serve.app import sse

        return sse({**self.head, "choices": choices, **more})

    def first(self) -> bytes:
        return self._sse([self._choice("", {}, None, role=True)])

    def content(self, text: str, extra: dict[str, Any]) -> bytes:
        return self._sse([self._choice(text, extra, None)])

    def finish(self, reason: str) -> bytes:
        return self._sse([self._choice(None if self.chat else "", {}, reason)])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return self._sse([], usage=usage)


def _completion_body(
    request_id: str, gen: GenerationRequest, content: str, outcome: Outcome, created: int
) -> dict[str, Any]:
    usage = {
        "prompt_tokens": outcome.prompt_tokens or 0,
        "completion_tokens": outcome.tokens_out(),
        "total_tokens": (outcome.prompt_tokens or 0) + outcome.tokens_out(),
    }
    finish = outcome.finish_reason or "stop"
    if gen.messages is None:
        choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": finish}
        return {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": gen.model_id,
            "system_fingerprint": FINGERPRINT,
            "choices": [choice],
            "usage": usage,
        }
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if outcome.extra.get("tool_calls"):
        message["tool_calls"] = outcome.extra["tool_calls"]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": gen.model_id,
        "system_fingerprint": FINGERPRINT,
        "choices": [choice],
        "usage": usage,
    }
