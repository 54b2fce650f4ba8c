"""The OpenAI wire format of the gateway's answers: SSE framing, stream chunks
(`chat.completion.chunk` / `text_completion`) and the non-streamed response bodies."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from slmkit.serve.api_errors import ApiError
from slmkit.serve.engines.request import GenerationRequest
from slmkit.serve.generation import Outcome

FINGERPRINT = "slmkit"
SSE_DONE = b"data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def sse_error(error: ApiError) -> bytes:
    """The last event of a stream that failed after its headers were sent."""
    return b"data: " + error.body_bytes() + b"\n\n"


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class ChunkWriter:
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
        return sse({**self.head, "choices": choices, **more})

    def first(self) -> bytes:
        return self._sse([self._choice("", {}, None, role=True)])

    def content(self, text: str, extra: dict[str, Any]) -> bytes:
        return self._sse([self._choice(text, extra, None)])

    def reasoning(self, text: str) -> bytes:
        """A chunk of a reasoning model's thinking (`delta.reasoning_content`)."""
        return self._sse([self._choice(None, {"reasoning_content": text}, None)])

    def ending(self, outcome: Outcome, include_usage: bool) -> list[bytes]:
        """The finish chunk, the usage chunk when asked for, and `[DONE]`."""
        reason = outcome.finish_reason or "stop"
        events = [self._sse([self._choice(None if self.chat else "", {}, reason)])]
        if include_usage:
            usage = usage_body(outcome.prompt_tokens or 0, outcome.tokens_out())
            events.append(self._sse([], usage=usage))
        return [*events, SSE_DONE]


def completion_body(
    request_id: str,
    gen: GenerationRequest,
    content: str,
    outcome: Outcome,
    created: int,
    reasoning: str | None = None,
) -> dict[str, Any]:
    """The body of a non-streamed `chat.completion` or `text_completion`."""
    finish = outcome.finish_reason or "stop"
    if gen.messages is None:
        choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": finish}
    else:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        if outcome.extra.get("tool_calls"):
            message["tool_calls"] = outcome.extra["tool_calls"]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    return {
        "id": request_id,
        "object": "text_completion" if gen.messages is None else "chat.completion",
        "created": created,
        "model": gen.model_id,
        "system_fingerprint": FINGERPRINT,
        "choices": [choice],
        "usage": usage_body(outcome.prompt_tokens or 0, outcome.tokens_out()),
    }


def wire_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    """A vector as OpenAI sends it: a list of floats, or base64 of little-endian float32s."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector
