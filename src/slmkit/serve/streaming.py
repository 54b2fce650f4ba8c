"""Streamed answers: OpenAI SSE from engine deltas through the output filter and the repetition
guard, a cached answer replayed as a stream, and a response whose clean-up always runs.

A stream is only answered once the engine has produced its first delta, so every error up to
then still gets a proper status; a later one ends the stream with a `data: {"error": ...}` event.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from slmkit.serve.answer_text import AnswerText
from slmkit.serve.api_errors import ApiError
from slmkit.serve.config import ServeConfig
from slmkit.serve.engines.base import Delta, Engine
from slmkit.serve.generation import (
    Outcome,
    RequestContext,
    close_events,
    next_delta,
    request_deadline,
)
from slmkit.serve.guards import RepetitionDetector
from slmkit.serve.metrics import GatewayMetrics
from slmkit.serve.openai_wire import ChunkWriter, sse_error

OnClose = Callable[[], Awaitable[None]]


class GuardedStream(StreamingResponse):
    """A streaming response whose clean-up runs even if the client left before it started."""

    def __init__(
        self, content: AsyncIterator[bytes], on_close: OnClose, headers: dict[str, str]
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


class StreamResponder:
    """Answers requests as SSE streams; each stream fills its `RequestContext` (outcome, status,
    error, audit text) and then calls the `on_close` it was given."""

    def __init__(
        self,
        config: ServeConfig,
        metrics: GatewayMetrics,
        created: int,
        before_done: Callable[[RequestContext], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.created = created
        # runs once the answer is whole, before its `[DONE]`: the gateway puts the request on
        # record there, so a client that got `[DONE]` has an audit row, whatever happens next
        self.before_done = before_done

    async def open(self, engine: Engine, ctx: RequestContext, on_close: OnClose) -> GuardedStream:
        """Start generating and wait for the first delta; errors up to then are raised."""
        timeout_s = self.config.limits.request_timeout_s
        deadline = request_deadline(ctx.started, timeout_s)  # shared with members asked before
        events = engine.generate(ctx.gen)
        try:
            first = await next_delta(events, deadline, timeout_s)
        except BaseException:
            await close_events(events)
            raise
        outcome = ctx.outcome = Outcome()
        ctx.status = 499  # until the last event is sent: the client may leave

        async def close() -> None:
            await close_events(events)
            if not ctx.finished:  # cut short: the row holds what the client was sent
                self._record_answer(ctx, outcome)
            await on_close()

        body = self._live_body(first, events, ctx, outcome, deadline)
        return GuardedStream(body, close, ctx.headers)

    async def _live_body(
        self,
        first: Delta | None,
        events: AsyncGenerator[Delta, None],
        ctx: RequestContext,
        outcome: Outcome,
        deadline: float,
    ) -> AsyncIterator[bytes]:
        model = ctx.gen.model_id
        chunk = ChunkWriter(ctx.rec.id, ctx.gen, self.created)
        text = AnswerText(ctx.gen.reasoning, self.config.output_filter)
        detector = RepetitionDetector(self.config.repetition)
        yield chunk.first()
        delta = first
        while delta is not None:
            outcome.absorb(delta, ctx.started)
            thought, piece = text.feed(delta.text) if delta.text else ("", "")
            if thought:
                yield chunk.reasoning(thought)
            if piece or delta.extra:
                yield chunk.content(piece, delta.extra)
            if detector.feed(delta.text):
                outcome.repeated, outcome.finish_reason = True, "stop"
                self.metrics.repetition.labels(model, "stopped").inc()
                break
            try:
                delta = await next_delta(events, deadline, self.config.limits.request_timeout_s)
            except ApiError as exc:
                ctx.status, ctx.error = exc.status, exc
                yield sse_error(exc)
                return
        thought, tail = text.flush()
        if thought:
            yield chunk.reasoning(thought)
        if tail:
            yield chunk.content(tail, {})
        if text.redactions:
            self.metrics.redactions.labels(model).inc(text.redactions)
        *ending, done = chunk.ending(outcome, ctx.include_usage)
        for event in ending:
            yield event
        self._record_answer(ctx, outcome)
        await self._done(ctx)
        yield done

    def _record_answer(self, ctx: RequestContext, outcome: Outcome) -> None:
        """The audit row holds the answer the client was sent, filtered, as for other answers."""
        answer = AnswerText(ctx.gen.reasoning, self.config.output_filter)
        ctx.rec.response_text = answer.whole(outcome.text)[1]

    async def _done(self, ctx: RequestContext) -> None:
        """The answer is whole: its row is written (and waited for) before `[DONE]` goes out."""
        ctx.status = 200
        if self.before_done is not None:
            await self.before_done(ctx)

    def replay(self, ctx: RequestContext, outcome: Outcome, on_close: OnClose) -> GuardedStream:
        """A cached answer as a stream: one content chunk, then the usual ending."""
        chunk = ChunkWriter(ctx.rec.id, ctx.gen, self.created)
        answer = AnswerText(ctx.gen.reasoning, self.config.output_filter)
        reasoning, content = answer.whole(outcome.text)
        ctx.outcome, ctx.rec.response_text = outcome, content

        async def body() -> AsyncIterator[bytes]:
            yield chunk.first()
            if reasoning:
                yield chunk.reasoning(reasoning)
            yield chunk.content(content, outcome.extra)
            *ending, done = chunk.ending(outcome, ctx.include_usage)
            for event in ending:
                yield event
            await self._done(ctx)
            yield done

        return GuardedStream(body(), on_close, ctx.headers)
