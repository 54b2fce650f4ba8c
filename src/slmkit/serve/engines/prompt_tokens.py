"""A request as prompt token ids, for the engines that tokenize in-process (transformers, ONNX):
chat messages through the model's own chat template, a completion prompt as it is."""

from __future__ import annotations

from typing import Any

from slmkit.serve.api_errors import ApiError
from slmkit.serve.protocol import GenerationRequest


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
