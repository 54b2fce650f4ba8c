"""What the in-process engines (transformers, ONNX) share: a request as prompt token ids (chat
messages through the model's own chat template, a completion prompt as it is), the checks before a
job is queued, the tokenizer taken in turns, and the relay of a job's deltas from the worker
thread to the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from slmkit.serve.engines.base import Delta, EngineState
from slmkit.serve.engines.errors import (
    context_length_exceeded,
    engine_failed,
    engine_unavailable,
    invalid_request,
)
from slmkit.serve.engines.request import GenerationRequest


def message_text(content: Any) -> str:
    """A message's text: a string as is, the text parts of a content list joined."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def encode_request(tokenizer: Any, request: GenerationRequest) -> list[int]:
    """Prompt token ids; a chat template the messages break is a 400 (the client's input)."""
    if request.messages is None:
        return list(tokenizer(request.prompt or "")["input_ids"])
    from slmkit.models.chat import render_chat_prompt

    messages = [
        {"role": m["role"], "content": message_text(m.get("content"))} for m in request.messages
    ]
    try:
        prompt = render_chat_prompt(tokenizer, messages)
    except Exception as exc:  # template errors are caused by what the client sent
        raise invalid_request(
            f"cannot render the chat template: {exc}", code="invalid_messages"
        ) from exc
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


class SharedTokenizer:
    """The engine's tokenizer, called by one thread at a time: prompts are encoded off the event
    loop (in asyncio's helper threads) while the worker thread decodes answers, and a fast
    tokenizer called from two threads at once can fail ("Already borrowed")."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._turn = threading.Lock()

    def encode(self, request: GenerationRequest) -> list[int]:
        with self._turn:
            return encode_request(self.tokenizer, request)

    def decode(self, ids: list[int]) -> str:
        with self._turn:
            return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    async def count(self, request: GenerationRequest) -> int:
        """The prompt's length in tokens, encoded off the event loop."""
        return len(await asyncio.to_thread(self.encode, request))

    async def admit(
        self, request: GenerationRequest, state: EngineState, n_ctx: int | None
    ) -> list[int]:
        """The prompt's token ids (encoded off the event loop), once the engine is ready and the
        prompt leaves room to answer."""
        if state != "ready":
            raise engine_unavailable(request.model_id, state)
        input_ids = await asyncio.to_thread(self.encode, request)
        if n_ctx is not None and len(input_ids) >= n_ctx:
            raise context_length_exceeded(len(input_ids), n_ctx)
        return input_ids


def stop_prefix_length(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


@dataclass
class Job:
    """A queued generation of an in-process engine. The worker thread feeds it tokens (`take`)
    and ends it (`finish`, `fail`); its deltas, then None, reach the event loop on `events`."""

    request: GenerationRequest
    input_ids: list[int]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Delta | BaseException | None]
    cancelled: bool = False
    done: bool = False
    tokens: list[int] = field(default_factory=list)
    sent_chars: int = 0

    def emit(self, item: Delta | BaseException | None) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)

    def emit_text(self, text: str) -> None:
        """What `text` (the whole answer so far) adds to what was sent."""
        if len(text) > self.sent_chars:
            self.emit(Delta(text=text[self.sent_chars :]))
            self.sent_chars = len(text)

    def take(self, token: int, tokenizer: SharedTokenizer, eos: set[int]) -> str | None:
        """One generated token: its text is sent, except a partial character and a tail that may
        begin a stop string (both wait for the next token; a stop string cuts the answer);
        returns the finish reason once the answer ends, else None."""
        if token in eos:
            self.flush(tokenizer)
            return "stop"
        self.tokens.append(token)
        text = tokenizer.decode(self.tokens)
        for stop in self.request.stop:
            at = text.find(stop)
            if at != -1:
                self.emit_text(text[:at])
                return "stop"
        if len(self.tokens) >= self.request.max_tokens:
            self.flush(tokenizer, text)
            return "length"
        if not text.endswith("\ufffd"):
            self.emit_text(text[: len(text) - stop_prefix_length(text, self.request.stop)])
        return None

    def flush(self, tokenizer: SharedTokenizer, text: str | None = None) -> None:
        """The answer ended without a stop string: send what was held back (a last partial
        character is dropped)."""
        text = tokenizer.decode(self.tokens) if text is None else text
        self.emit_text(text.removesuffix("\ufffd"))

    def finish(self, reason: str) -> None:
        self.done = True
        self.emit(
            Delta(
                finish_reason=reason,
                prompt_tokens=len(self.input_ids),
                completion_tokens=len(self.tokens),
            )
        )
        self.emit(None)

    def fail(self, exc: Exception) -> None:
        self.done = True
        self.emit(engine_failed(f"generation failed: {type(exc).__name__}: {exc}"))
        self.emit(None)


def opened_text(tokenizer: Any, request: GenerationRequest) -> str:
    """`<think>\\n` when the chat template's generation prompt opened a reasoning block, so the
    answer reads as llama-server returns it (it repeats the opening in the text it streams)."""
    from slmkit.models.reasoning import OPEN, opens_thinking

    template = getattr(tokenizer, "chat_template", None)
    if request.messages is None or not isinstance(template, str):
        return ""
    return f"{OPEN}\n" if opens_thinking(template) else ""


def eos_ids(tokenizer: Any, model: Any = None) -> set[int]:
    """Every token that ends an answer: the tokenizer's EOS and the generation config's (Phi-3
    ends its turns with `<|end|>`, Llama-3 with `<|eot_id|>` beside `<|end_of_text|>`)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list) else {configured}
    return {int(i) for i in ids if i is not None}


async def relay(job: Job, opened: str = "") -> AsyncGenerator[Delta, None]:
    """The job's deltas as they arrive (`opened` before the first text); a worker's exception is
    raised here. However the consumer stops (done, disconnect, error), the job is marked cancelled
    so the worker stops at its next token."""
    try:
        while (item := await job.events.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            if opened and item.text:
                item.text, opened = opened + item.text, ""
            yield item
    finally:
        job.cancelled = True
