"""What the in-process engines (transformers, ONNX) share: a request as prompt token ids (chat
messages through the model's own chat template, a completion prompt as it is), the checks before a
job is queued, the tokenizer taken in turns, and the relay of a job's deltas from the worker
thread to the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator
from typing import Any, Protocol

from slmkit.serve.engines.base import Delta, EngineState
from slmkit.serve.engines.errors import ApiError, context_length_exceeded, engine_unavailable
from slmkit.serve.engines.request import GenerationRequest


class WorkerJob(Protocol):
    """A queued generation: the worker thread puts deltas (then None) on `events`."""

    events: asyncio.Queue[Delta | BaseException | None]
    cancelled: bool


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
        raise ApiError(
            400, f"cannot render the chat template: {exc}", code="invalid_messages"
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


async def relay(job: WorkerJob, opened: str = "") -> AsyncGenerator[Delta, None]:
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
