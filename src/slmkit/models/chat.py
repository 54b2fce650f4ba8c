"""Chat with a model through its own chat template (transformers backend)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slmkit.errors import ModelNotFoundError
from slmkit.models.load import load_model
from slmkit.models.reasoning import ReasoningSplitter, opens_thinking
from slmkit.models.resolve import resolve_model
from slmkit.models.settings import GenerationSettings


def render_chat_prompt(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> str:
    """The prompt text for `messages` in the model's own template, ending where the assistant
    speaks: prepared as for training and serving (`models.messages`), with the variables
    llama-server passes to every template (today's date), so both render the same prompt."""
    from slmkit.models.messages import prepare_messages, template_knows_tools
    from slmkit.models.templates import runtime_context

    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ModelNotFoundError(
            "this model has no chat template; use a chat model or pass --template when training"
        )
    template = str(template.get("default") if isinstance(template, dict) else template)
    return str(
        tokenizer.apply_chat_template(
            prepare_messages(messages, template, tools),
            tools=tools if tools and template_knows_tools(template) else None,
            tokenize=False,
            add_generation_prompt=True,
            **runtime_context(),
        )
    )


def generate_reply(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, str]],
    settings: GenerationSettings,
    on_text: Callable[[str], None] | None = None,
) -> str:
    """Generate one assistant reply; `on_text` receives text pieces as they are produced."""
    import torch
    from transformers import TextIteratorStreamer

    prompt = render_chat_prompt(tokenizer, messages)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_tokens,
        "pad_token_id": tokenizer.eos_token_id,
    }
    if settings.temperature > 0:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    worker = threading.Thread(target=_generate, args=(model, inputs, kwargs, streamer), daemon=True)
    worker.start()
    pieces = []
    for piece in streamer:
        pieces.append(piece)
        if on_text is not None and piece:
            on_text(piece)
    worker.join()
    return "".join(pieces).strip()


def _generate(model: Any, inputs: Any, kwargs: dict[str, Any], streamer: Any) -> None:
    import torch

    with torch.inference_mode():
        model.generate(**inputs, **kwargs, streamer=streamer)


@dataclass
class ChatSession:
    """A conversation with one model; keeps history for the interactive loop."""

    model: Any
    tokenizer: Any
    model_name: str
    settings: GenerationSettings
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def open(
        cls, ref: str, *, system: str | None = None, settings: GenerationSettings | None = None
    ) -> ChatSession:
        resolved = resolve_model(ref)
        model, tokenizer = load_model(resolved)
        render_chat_prompt(
            tokenizer, [{"role": "user", "content": "hi"}]
        )  # fail early without a template
        return cls(model, tokenizer, resolved.name, settings or GenerationSettings(), system)

    def reset(self) -> None:
        self.history.clear()

    def ask(
        self,
        prompt: str,
        on_text: Callable[[str], None] | None = None,
        on_thinking: Callable[[str], None] | None = None,
    ) -> str:
        """The answer to `prompt`; a reasoning model's thinking goes to `on_thinking` and stays
        out of the answer and of the history (as a client sends back what it was answered)."""
        messages = (
            [{"role": "system", "content": self.system}] if self.system else []
        ) + self.history
        messages.append({"role": "user", "content": prompt})
        template = getattr(self.tokenizer, "chat_template", None)
        splitter = ReasoningSplitter(inside=isinstance(template, str) and opens_thinking(template))

        def piece(text: str) -> None:
            _route(splitter.feed(text), on_text, on_thinking)

        generate_reply(self.model, self.tokenizer, messages, self.settings, piece)
        _route(splitter.finish(), on_text, on_thinking)
        reply = "".join(splitter.content).strip()
        self.history += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": reply},
        ]
        return reply


def _route(
    parts: tuple[str, str],
    first: Callable[[str], None] | None,
    second: Callable[[str], None] | None,
) -> None:
    """Send (thinking, answer) pieces to their callbacks (`first` gets the answer)."""
    thinking, answer = parts
    if answer and first is not None:
        first(answer)
    if thinking and second is not None:
        second(thinking)
