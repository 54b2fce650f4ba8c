"""The gateway: routes OpenAI requests to engines and sees each one through admission (429),
context policy, cache, generation (`generation.py`) or streaming (`streaming.py`), then metrics,
the audit record and the alert window. Also the model list, health, feedback and embeddings.

Everything that can fail is decided before the first byte of the response: a stream is only
answered once the engine has produced its first event.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from slmkit.serve import api_errors
from slmkit.serve.admission import Admission, AdmissionSlot
from slmkit.serve.alert_state import alert_watcher
from slmkit.serve.answer_cache import AnswerCache
from slmkit.serve.answer_text import AnswerText
from slmkit.serve.api_errors import ApiError
from slmkit.serve.audit import MONITOR_SOURCE, AuditLog, AuditRecord
from slmkit.serve.config import ServeConfig
from slmkit.serve.engines.base import Engine
from slmkit.serve.generation import (
    Outcome,
    RequestContext,
    fit_context,
    prompt_text,
)
from slmkit.serve.key_limits import KeyLimits
from slmkit.serve.logs import tokens_today_by_key
from slmkit.serve.metrics import GatewayMetrics
from slmkit.serve.model_cards import ModelCards
from slmkit.serve.openai_wire import completion_body, wire_vector
from slmkit.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    FeedbackRequest,
    generation_request,
)
from slmkit.serve.rag import GatewayRag
from slmkit.serve.routing import RoutePlan, Router
from slmkit.serve.streaming import StreamResponder
from slmkit.serve.webhook import WebhookSender
from slmkit.state import redis_state
from slmkit.state.sql import StateError

AUDIT_WAIT_S = 5.0  # longest wait for a request's audit row before answering it anyway


class Companion(Protocol):
    """A background task that lives as long as the gateway (started after its engines, stopped
    before them), e.g. the scheduled drift monitor that `slm serve` runs beside it."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class Gateway:
    """Routes OpenAI requests to engines; owns metrics, audit, cache, admission and alerts."""

    def __init__(
        self,
        config: ServeConfig,
        engines: dict[str, Engine],
        embedder: Any = None,
        companions: Sequence[Companion] = (),
    ) -> None:
        self.config = config
        self.engines = engines
        self.embedder = embedder
        self.metrics = GatewayMetrics(self.unique_engines)
        self.audit: AuditLog | None = None
        self.cache_url = config.state.cache_url()  # Valkey/Redis that gateways share, or None
        self.shared = redis_state.connect(self.cache_url) if self.cache_url else None
        self.cache = AnswerCache(config.cache, engines, self.metrics, self.shared)
        self.admission = Admission(engines, config.limits.max_queue, self.metrics)
        self.router = Router(config, engines, self.admission, self.metrics)
        self.rag = GatewayRag.load(config, embedder)  # `rag:` indexes: a bad one stops the start
        self.key_limits = KeyLimits.from_config(config, self.metrics, self.shared)
        self.webhook = (
            WebhookSender(config.alerting.webhook, self.metrics.alert_deliveries)
            if config.alerting.webhook is not None
            else None
        )
        self.companions = list(companions)  # e.g. the scheduled drift monitor of `slm serve`
        notify = self.webhook.send if self.webhook is not None else None
        self.alerts = alert_watcher(config, self.metrics.alerts, notify)  # shared: one database
        self.created = int(time.time())
        self.streams = StreamResponder(config, self.metrics, self.created, self._settle_stream)
        embeddings_id = config.embeddings.model_id if embedder is not None else None
        self.cards = ModelCards(engines, self.router.routes, embeddings_id, self.created)
        for engine in self.unique_engines():
            if hasattr(engine, "on_restart"):
                engine.on_restart = self._on_engine_restart
            if hasattr(engine, "attach_metrics"):  # replica pools, remote endpoints
                engine.attach_metrics(self.metrics)

    # -- lifecycle --------------------------------------------------------------------------
    def unique_engines(self) -> list[Engine]:
        return list({id(e): e for e in self.engines.values()}.values())

    async def start(self) -> None:
        if self.shared is not None and self.cache_url is not None:
            await redis_state.check_reachable(self.shared, self.cache_url)
        if self.config.audit.enabled:
            problems = self.metrics.audit_problems
            self.audit = AuditLog(
                self.config.audit,
                lambda kind: problems.labels(kind).inc(),
                database=self.config.audit_target(),
            )
            self.key_limits.seed_daily(tokens_today_by_key(self.audit.path))
        started: list[Engine] = []
        try:
            for engine in self.unique_engines():
                await engine.start()
                started.append(engine)
        except BaseException:
            for engine in started:
                await engine.stop()
            raise
        if self.webhook is not None:
            self.webhook.start()
        self.alerts.start()
        for companion in self.companions:
            companion.start()

    async def stop(self) -> None:
        for companion in reversed(self.companions):
            await companion.stop()
        await self.alerts.stop()
        if self.webhook is not None:
            await self.webhook.stop()
        await asyncio.gather(
            *(engine.stop() for engine in self.unique_engines()), return_exceptions=True
        )
        await self.key_limits.drain()
        if self.shared is not None:
            await self.shared.aclose()
        if self.audit is not None:
            self.audit.close()

    def _on_engine_restart(self, model_id: str) -> None:
        self.metrics.engine_restarts.labels(model_id).inc()

    # -- the generation endpoints -----------------------------------------------------------
    async def handle_generation(
        self, body: ChatCompletionRequest | CompletionRequest, request: Request, endpoint: str
    ) -> Response:
        """One request from start to settlement. Its admission slot, its key's reservation, its
        metrics and its audit row are settled in the `finally` below on every way out (an answer,
        an error, any exception, the client leaving), except by a stream that started: that
        settles the same way when it closes."""
        ctx = self._context(body, request, endpoint)
        slot: AdmissionSlot | None = None
        written: Future[None] | None = None
        try:
            plan = await self.router.plan(body, request.headers, ctx)  # aims ctx.gen
            engine = self.engines[plan.target]
            ctx.rec.prompt_text = prompt_text(ctx.gen)
            if ctx.gen.messages is not None:  # the conversation as asked, for `slm feedback export`
                ctx.rec.prompt_messages = json.dumps(ctx.gen.messages, ensure_ascii=False)
            ctx.key_ticket = await self.key_limits.admit(
                ctx.rec.key_id,
                lambda: engine.count_prompt_tokens(ctx.gen),
                estimate=len(ctx.rec.prompt_text) // 4 + 1,
            )
            slot = self.router.admit(plan, ctx)  # a member that is down or full passes it on
            admitted = slot
            answer = lambda: self._answer(body, ctx, admitted, plan)  # noqa: E731
            response = await self.rag.answer(ctx, answer)  # passages in, `sources` out
        except asyncio.CancelledError:  # the client left before its answer
            ctx.status = 499
            raise
        except Exception as exc:
            ctx.error = api_errors.internal_error(exc)
            raise
        finally:
            if not ctx.stream_settles:  # else the stream's `on_close` settles it
                if slot is not None:
                    slot.release()
                written = self._finish(ctx, ctx.error)
        await self._durable(written)
        return response

    async def _answer(
        self,
        body: ChatCompletionRequest | CompletionRequest,
        ctx: RequestContext,
        slot: AdmissionSlot,
        plan: RoutePlan,
    ) -> Response:
        """Answer an admitted request: from the cache, down the plan's chain, or as a stream (which
        takes the admission slot and the settlement over until it ends)."""
        engine = self.engines[plan.target]
        policy = getattr(body, "context_policy", None) or self.config.limits.context_policy
        await self._fit_context(engine, ctx, policy)
        outcome = await self.cache.lookup(ctx)
        if not ctx.gen.stream:
            if outcome is None:
                outcome = await self.router.run(plan, ctx, slot)
                await self.cache.store(ctx, outcome)
            return self._json_response(ctx, outcome)
        on_close = self._stream_closer(ctx, slot)
        if outcome is None and plan.holds_stream:
            outcome = await self.router.hold(plan, ctx, slot)  # replayed once checks pass
        if outcome is not None:
            stream = self.streams.replay(ctx, outcome, on_close)
        else:
            stream = await self.router.open_stream(plan, ctx, self.streams, on_close)
        ctx.stream_settles = True
        return stream

    async def _settle_stream(self, ctx: RequestContext) -> None:
        """A stream's answer is whole: settle it and wait for its row before its `[DONE]`."""
        await self._durable(self._finish(ctx, None))

    async def _durable(self, written: Future[None] | None) -> None:
        """With `audit.durable`, wait until a request's row is committed (at most AUDIT_WAIT_S,
        and not while the database is failing: then answers go on)."""
        if written is not None and self.config.audit.durable and self.audit and self.audit.healthy:
            await _committed(written)

    def _stream_closer(
        self, ctx: RequestContext, slot: AdmissionSlot
    ) -> Callable[[], Awaitable[None]]:
        async def on_close() -> None:
            slot.release()
            self._finish(ctx, ctx.error)
            if ctx.status == 200 and ctx.outcome is not None and not ctx.rec.cached:
                await self.cache.store(ctx, ctx.outcome)

        return on_close

    def _json_response(self, ctx: RequestContext, outcome: Outcome) -> JSONResponse:
        text = AnswerText(ctx.gen.reasoning, self.config.output_filter)
        reasoning, content = text.whole(outcome.text)
        if text.redactions:
            self.metrics.redactions.labels(ctx.gen.model_id).inc(text.redactions)
        ctx.rec.response_text = content
        ctx.outcome = outcome
        body = completion_body(ctx.rec.id, ctx.gen, content, outcome, self.created, reasoning)
        return JSONResponse(body, headers=ctx.headers)

    async def _fit_context(self, engine: Engine, ctx: RequestContext, policy: str) -> None:
        fitted = await fit_context(engine, ctx.gen, policy, self.config)
        if fitted is not None and fitted.action != "none":
            ctx.gen.messages = fitted.messages
            ctx.headers[f"x-slm-context-{fitted.action}"] = str(fitted.dropped)
            self.metrics.context_actions.labels(ctx.gen.model_id, fitted.action).inc()

    def _context(
        self, body: ChatCompletionRequest | CompletionRequest, request: Request, endpoint: str
    ) -> RequestContext:
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
        gen = generation_request(body, body.model, self._max_tokens(body), self.config.reasoning)
        # the drift monitor's probes: audited, but not user traffic (alerts, A/B, statistics)
        if request.headers.get("x-slm-source", "").lower() == MONITOR_SOURCE:
            gen.source = MONITOR_SOURCE
        return RequestContext(
            rec=rec,
            gen=gen,
            started=started,
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            headers={"x-request-id": rec.id},
        )

    def _max_tokens(self, body: ChatCompletionRequest | CompletionRequest) -> int:
        # Only chat has max_completion_tokens; on /v1/completions it is an unvalidated extra field.
        chat_limit = body.max_completion_tokens if isinstance(body, ChatCompletionRequest) else None
        asked = chat_limit or body.max_tokens
        return min(
            asked or self.config.limits.default_max_tokens, self.config.limits.max_tokens_cap
        )

    # -- bookkeeping ------------------------------------------------------------------------
    def _finish(self, ctx: RequestContext, error: ApiError | None = None) -> Future[None] | None:
        """Metrics, alert window and audit record of a request that is over (once); the audit
        row's future, done once it is committed."""
        if ctx.finished:
            return None
        ctx.finished = True
        rec = ctx.rec
        rec.latency_s = time.perf_counter() - ctx.started
        rec.status = error.status if error else ctx.status
        rec.error_code = error.code if error else None
        rec.replica = rec.replica or ctx.gen.replica
        rec.version = rec.version or ctx.gen.version
        rec.source = ctx.gen.source
        known = rec.model in self.engines or rec.model in self.router.routes
        model = rec.model if known and rec.model is not None else "unknown"
        if rec.route and rec.served_by and rec.route_reason:
            self.metrics.route_requests.labels(rec.route, rec.served_by, rec.route_reason).inc()
        if ctx.outcome is not None:
            rec.prompt_tokens = ctx.outcome.prompt_tokens
            rec.completion_tokens = ctx.outcome.tokens_out()
            rec.ttft_s = ctx.outcome.ttft
            self.metrics.observe_tokens(model, ctx.outcome, rec.cached)
            self.key_limits.settle(ctx.key_ticket, ctx.outcome.prompt_tokens, rec.completion_tokens)
        else:
            self.key_limits.settle(ctx.key_ticket, 0, 0)
        self.metrics.requests.labels(rec.endpoint, model, str(rec.status)).inc()
        self.metrics.latency.labels(rec.endpoint, model).observe(rec.latency_s)
        escalated = (rec.route_reason or "").startswith("escalated")
        if rec.source != MONITOR_SOURCE:
            self.alerts.record(rec.status, rec.latency_s, escalated, rec.model)
        return self.audit.record(rec) if self.audit is not None else None

    # -- other endpoints --------------------------------------------------------------------
    def list_models(self) -> dict[str, Any]:
        return self.cards.listing()

    def model_card(self, model_id: str) -> dict[str, Any]:
        return self.cards.card(model_id)

    async def health(self) -> dict[str, Any]:
        engines = [await engine.health() for engine in self.unique_engines()]
        self._update_engine_up()
        ok = all(e["state"] == "ready" for e in engines)
        return {"status": "ok" if ok else "degraded", "engines": engines}

    def render_metrics(self) -> bytes:
        self._update_engine_up()
        return self.metrics.render()

    def _update_engine_up(self) -> None:
        for engine in self.unique_engines():
            for model_id in engine.model_ids:
                self.metrics.engine_up.labels(model_id).set(1 if engine.state == "ready" else 0)

    async def feedback(self, body: FeedbackRequest) -> dict[str, Any]:
        if self.audit is None:
            raise ApiError(
                400, "feedback needs the audit log (audit.enabled: true)", code="audit_disabled"
            )
        try:
            stored = await asyncio.to_thread(
                self.audit.add_feedback, body.id, body.rating, body.correction, body.tags
            )
        except StateError as exc:  # the database is down: try again, nothing was stored
            raise api_errors.state_unavailable(exc) from exc
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
        if body.dimensions is not None and body.dimensions != self.embedder.dimensions:
            raise api_errors.invalid_request(
                f"{body.model} gives {self.embedder.dimensions} dimensions, not {body.dimensions}",
                param="dimensions",
                code="invalid_value",
            )
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        vectors, tokens = await asyncio.to_thread(self.embedder.embed, texts)
        data = [
            {"object": "embedding", "index": i, "embedding": wire_vector(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        return {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


async def _committed(written: Future[None]) -> None:
    """Wait (at most AUDIT_WAIT_S) for a request's audit row to be committed; a failed write is
    the audit log's to count, not the client's."""
    waiting = asyncio.wrap_future(written)
    waiting.add_done_callback(lambda done: done.cancelled() or done.exception())
    await asyncio.wait([waiting], timeout=AUDIT_WAIT_S)
