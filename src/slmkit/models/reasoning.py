"""Reasoning ("thinking") text: in data, in templates and in generated answers.

A message carries its reasoning in `reasoning_content` (the field DeepSeek's API, vLLM and
llama.cpp's server use). Data may also give it as `reasoning`, or inline as LLaMA-Factory does:
`<think>...</think>` at the start of the content. A template that reads `reasoning_content` (Qwen3)
gets the field and decides itself what to show; for any other template the answer being trained
carries it inline as `<think>\\n...\\n</think>\\n\\n` before the text, which is what R1-style
models write, and earlier answers carry none. A template whose generation prompt already opens the
block (DeepSeek-R1-Distill ends it with `<think>\\n`) makes the model's output start inside it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

OPEN = "<think>"
CLOSE = "</think>"
FIELDS = ("reasoning_content", "reasoning")


def inline(reasoning: str, content: str) -> str:
    """Reasoning and answer as one text, the way R1-style models write them."""
    return f"{OPEN}\n{reasoning.strip()}\n{CLOSE}\n\n{content.lstrip()}"


def split_inline(content: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a text that opens with `<think>...</think>`; (None, text) otherwise."""
    stripped = content.lstrip()
    if not stripped.startswith(OPEN) or CLOSE not in stripped:
        return None, content
    inner, _, answer = stripped[len(OPEN) :].partition(CLOSE)
    return inner.strip(), answer.lstrip()


def normalize_message(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant message with its reasoning in `reasoning_content` (from `reasoning` or an inline
    `<think>` block); other messages unchanged."""
    if message.get("role") != "assistant":
        return message
    reasoning = next((message[k] for k in FIELDS if isinstance(message.get(k), str)), None)
    content = message.get("content")
    if reasoning is None and isinstance(content, str):
        reasoning, content = split_inline(content)
    if reasoning is None:
        return message
    out = {k: v for k, v in message.items() if k not in FIELDS}
    out["content"] = content
    out["reasoning_content"] = reasoning
    return out


def reads_reasoning_field(template: str) -> bool:
    """Whether a chat template renders `reasoning_content` itself."""
    return "reasoning_content" in template


@functools.lru_cache(maxsize=32)
def opens_thinking(template: str) -> bool:
    """Whether the template's generation prompt ends inside an opened `<think>` block."""
    from slmkit.models.templates import render_plain

    try:
        prompt = render_plain(template, [{"role": "user", "content": "Hi"}], generation_prompt=True)
    except Exception:
        return False
    return prompt.rstrip().endswith(OPEN)


def for_history(messages: list[dict[str, Any]], template: str) -> list[dict[str, Any]]:
    """Earlier turns as inference sees them: a template that reads `reasoning_content` gets it
    (and decides what to show); for any other the reasoning of earlier answers is left out, as
    R1's template does and as a client sends back the answers it was given."""
    if reads_reasoning_field(template):
        return messages
    return [{k: v for k, v in m.items() if k not in FIELDS} for m in messages]


def for_reply(message: dict[str, Any], template: str) -> dict[str, Any]:
    """The answer being trained, with its reasoning where the template expects it: the field for
    templates that read it, else inline. When the generation prompt opens a `<think>` block, an
    answer without reasoning gets an empty block (what such a model writes when it does not think)."""
    if reads_reasoning_field(template) or message.get("role") != "assistant":
        return message
    content, reasoning = message.get("content"), message.get("reasoning_content")
    if not isinstance(content, str):
        return message
    if reasoning is None and not (opens_thinking(template) and not message.get("tool_calls")):
        return message
    out = {k: v for k, v in message.items() if k not in FIELDS}
    out["content"] = inline(reasoning or "", content)
    return out


@dataclass
class ReasoningSplitter:
    """Splits generated text into reasoning and answer as it streams.

    `inside=True` when the prompt already opened the block (the output starts with reasoning).
    Text that could be the start of a tag is held back until it is known not to be one; blanks
    before the block are passed on as they come."""

    inside: bool = False
    done: bool = False  # the block closed (or there was none): everything after is answer
    _held: str = ""
    _trim: bool = False  # newlines right after a tag are dropped, however the pieces fall
    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._trim = self.inside

    def feed(self, text: str) -> tuple[str, str]:
        """(new reasoning, new answer) from the next piece of generated text."""
        self._held += text
        new_reasoning, new_content = [], []
        while self._held:
            if self._trim:
                self._held = self._held.lstrip("\n")
                if not self._held:
                    break
                self._trim = False
            if self.done:
                new_content.append(self._held)
                self._held = ""
                break
            if not self.inside:
                stripped = self._held.lstrip()
                if not stripped:  # blanks before anything: pass them on, still undecided
                    new_content.append(self._held)
                    self._held = ""
                    break
                if stripped.startswith(OPEN):
                    self.inside, self._trim = True, True
                    self._held = stripped[len(OPEN) :]
                    continue
                if OPEN.startswith(stripped):
                    break  # could still become "<think>"
                self.done = True
                continue
            cut = self._held.find(CLOSE)
            if cut >= 0:
                new_reasoning.append(self._held[:cut])
                self._held = self._held[cut + len(CLOSE) :]
                self.done = self._trim = True
                continue
            keep = _partial_suffix(self._held, CLOSE)
            new_reasoning.append(self._held[: len(self._held) - keep])
            self._held = self._held[len(self._held) - keep :]
            break
        reasoning, content = "".join(new_reasoning), "".join(new_content)
        self.reasoning.append(reasoning)
        self.content.append(content)
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """What is still held at the end: reasoning if the block never closed, else answer."""
        held, self._held = self._held, ""
        if self.inside and not self.done:
            self.reasoning.append(held)
            return held, ""
        self.content.append(held)
        return "", held


def split_reasoning(text: str, *, inside: bool = False) -> tuple[str | None, str]:
    """(reasoning or None, answer) of a whole generated text."""
    splitter = ReasoningSplitter(inside=inside)
    splitter.feed(text)
    splitter.finish()
    reasoning = "".join(splitter.reasoning)
    if not splitter.inside:
        return None, "".join(splitter.content)
    return reasoning.strip(), "".join(splitter.content).strip()


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
