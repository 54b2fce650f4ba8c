"""Retrieval at serving time: a model entry with `rag:` gets the passages of its index nearest to
the last user message in a system message, and its answer carries their `sources`.

Indexes (and the MiniLM embedder) are loaded once, when the gateway is built: a missing or
corrupt index stops the start-up with one line naming its path. Per request: embed the question,
search, keep passages within `max_tokens` (MiniLM tokens; the last one cut to fit), inject them,
then let the context guard count the whole prompt with the engine's own tokenizer as usual.

`sources` (`[{source, heading, score}]`) is an extra top-level field of the non-streamed body and
of the *first* chunk of a stream (so a client can show them while the answer streams), and is
stored as JSON in the audit row's `sources` column. Only chat requests are augmented;
`/v1/completions` prompts are left as they are.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse, Response, StreamingResponse

from slmkit.errors import ServeError, SlmError
from slmkit.rag.config import RagSettings
from slmkit.rag.index import StoredIndex, load_index
from slmkit.serve.config import ServeConfig
from slmkit.serve.generation import RequestContext
from slmkit.serve.openai_wire import sse

MIN_CUT_TOKENS = 24  # a cut passage shorter than this is left out instead


@dataclass(frozen=True)
class Passage:
    source: str
    heading: str
    text: str
    score: float

    def label(self) -> str:
        return " > ".join(part for part in (self.source, self.heading) if part)

    def source_record(self) -> dict[str, Any]:
        return {"source": self.source, "heading": self.heading, "score": round(self.score, 4)}


class ModelRetrieval:
    """One model's index and settings: question -> passages within the token budget."""

    def __init__(self, settings: RagSettings, index: StoredIndex, embedder: Any) -> None:
        self.settings = settings
        self.index = index
        self.embedder = embedder

    def passages(self, question: str) -> list[Passage]:
        vectors, _ = self.embedder.embed([question])
        found = self.index.search(np.asarray(vectors, dtype=np.float32), self.settings.top_k)[0]
        kept, budget = [], self.settings.max_tokens
        for number, score in found:
            if score < self.settings.min_score:
                break
            chunk = self.index.chunks[number]
            text, used = self._fit(chunk.text, budget)
            if not text:
                break
            kept.append(Passage(chunk.source, chunk.heading, text, score))
            budget -= used
        return kept

    def _fit(self, text: str, budget: int) -> tuple[str, int]:
        """`text` whole, or cut to `budget` MiniLM tokens; "" when too little room is left."""
        encoding = self.embedder.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True
        )
        offsets = encoding["offset_mapping"]
        if len(offsets) <= budget:
            return text, len(offsets)
        if budget < MIN_CUT_TOKENS:
            return "", 0
        return text[: offsets[budget - 1][1]].rstrip() + " …", budget


class GatewayRag:
    """The retrieval of every model that has `rag:`, by model id."""

    def __init__(self, models: dict[str, ModelRetrieval]) -> None:
        self.models = models

    @classmethod
    def load(cls, config: ServeConfig, embedder: Any = None) -> GatewayRag:
        entries = [(m.id, m.rag) for m in config.models if m.rag is not None]
        indexes: dict[str, StoredIndex] = {}
        for model_id, settings in entries:  # every index checked before the embedder loads
            key = str(settings.index.resolve())
            try:
                indexes[key] = indexes.get(key) or load_index(settings.index)
            except SlmError as exc:
                raise ServeError(f"model {model_id!r}: rag index {exc}") from exc
        if entries and embedder is None:
            from slmkit.rag.index import load_embedder

            embedder = load_embedder()
        return cls(
            {
                model_id: ModelRetrieval(settings, indexes[str(settings.index.resolve())], embedder)
                for model_id, settings in entries
            }
        )

    def for_request(self, ctx: RequestContext) -> ModelRetrieval | None:
        if not self.models or ctx.gen.messages is None:
            return None
        return self.models.get(ctx.gen.model_id) or self.models.get(ctx.rec.model or "")

    async def answer(
        self, ctx: RequestContext, answer: Callable[[], Awaitable[Response]]
    ) -> Response:
        """Inject the passages, let `answer` produce the response, add `sources` to it."""
        retrieval = self.for_request(ctx)
        question = last_user_text(ctx.gen.messages or []) if retrieval else ""
        if retrieval is None or not question:
            return await answer()
        passages = await asyncio.to_thread(retrieval.passages, question)
        if passages:
            message = system_text(retrieval.settings.instructions, passages)
            ctx.gen.messages = with_system_text(ctx.gen.messages or [], message)
        sources = [p.source_record() for p in passages]
        ctx.rec.sources = json.dumps(sources)
        return with_sources(await answer(), sources)


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        ).strip()
    return ""


def system_text(instructions: str, passages: list[Passage]) -> str:
    blocks = [f"[{i}] {p.label()}\n{p.text}" for i, p in enumerate(passages, start=1)]
    return "\n\n".join([instructions, *blocks])


def with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The passages after the request's own system message (one system message stays first, as
    chat templates expect), or as a new first message."""
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        if isinstance(first.get("content"), str):
            return [{**first, "content": f"{first['content']}\n\n{text}"}, *messages[1:]]
        return [first, {"role": "system", "content": text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def with_sources(response: Response, sources: list[dict[str, Any]]) -> Response:
    if isinstance(response, StreamingResponse):
        response.body_iterator = _sources_in_first_event(response.body_iterator, sources)
        return response
    if isinstance(response, JSONResponse):
        body = json.loads(bytes(response.body))
        body["sources"] = sources
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in ("content-length", "content-type")
        }
        return JSONResponse(body, status_code=response.status_code, headers=headers)
    return response


async def _sources_in_first_event(
    events: AsyncIterable[Any], sources: list[dict[str, Any]]
) -> AsyncIterator[Any]:
    first = True
    async for event in events:
        if first and isinstance(event, bytes) and event.startswith(b"data: {"):
            data = json.loads(event[len(b"data: ") :])
            event = sse({**data, "sources": sources})
        first = False
        yield event
