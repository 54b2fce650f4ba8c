"""Request and response guards: repetition loops, output filtering (streaming-safe), the exact-match
response cache, and the context policies (reject / prune / summarize)."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from slmkit.answer_checks import find_repetition
from slmkit.serve.api_errors import context_length_exceeded
from slmkit.serve.config import DEFAULT_REDACTIONS, OutputFilter, RepetitionGuard


class RepetitionDetector:
    """Fed streamed text; says when the answer has fallen into a loop."""

    def __init__(self, guard: RepetitionGuard) -> None:
        self.guard = guard
        self.text = ""
        self._checked_words = 0

    def feed(self, piece: str) -> bool:
        if not self.guard.enabled or not piece:
            return False
        self.text += piece
        if not any(ch.isspace() or not ch.isalnum() for ch in piece):
            return False  # only check at word boundaries
        return (
            find_repetition(self.text[-4000:], self.guard.ngram, self.guard.min_repeats) is not None
        )


def _output_patterns(settings: OutputFilter) -> list[re.Pattern[str]]:
    patterns = [
        re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)
        for word in settings.blocklist
        if word
    ]
    if settings.redact_pii:
        patterns += [re.compile(p) for p in DEFAULT_REDACTIONS.values()]
    return patterns


class StreamingFilter:
    """Blocklist + PII redaction over a text stream. Holds back the last `holdback` characters so a
    match split across chunks is still caught; a match never exceeds `holdback` characters."""

    def __init__(self, settings: OutputFilter, holdback: int = 64) -> None:
        self.patterns = _output_patterns(settings)
        self.replacement = settings.replacement
        self.holdback = holdback
        self.buffer = ""
        self.redactions = 0

    @property
    def active(self) -> bool:
        return bool(self.patterns)

    def _apply(self, text: str) -> str:
        for pattern in self.patterns:
            text, count = pattern.subn(self.replacement, text)
            self.redactions += count
        return text

    def feed(self, piece: str) -> str:
        if not self.patterns:
            return piece
        self.buffer += piece
        cut = len(self.buffer) - self.holdback
        if cut <= 0:
            return ""
        for pattern in self.patterns:
            for match in pattern.finditer(self.buffer):
                if match.start() < cut < match.end():
                    cut = match.start()
        head, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return self._apply(head)

    def flush(self) -> str:
        rest, self.buffer = self.buffer, ""
        return self._apply(rest) if self.patterns else rest

    def filter_all(self, text: str) -> str:
        return self._apply(text) if self.patterns else text


@dataclass
class CachedResponse:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    extra: dict[str, Any]


class ResponseCache:
    """Exact-match LRU cache of deterministic answers."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[str, CachedResponse] = OrderedDict()

    def get(self, key: str) -> CachedResponse | None:
        hit = self.entries.get(key)
        if hit is not None:
            self.entries.move_to_end(key)
        return hit

    def put(self, key: str, value: CachedResponse) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)


TokenCounter = Callable[[list[dict[str, Any]]], Awaitable[int | None]]
Summarizer = Callable[[list[dict[str, Any]]], Awaitable[str]]


@dataclass
class ContextOutcome:
    messages: list[dict[str, Any]]
    action: str  # "none", "pruned", "summarized"
    dropped: int = 0


def _turn_indices(messages: list[dict[str, Any]]) -> list[int]:
    """Indices of the messages that may be dropped: not system, not the last message."""
    return [i for i, m in enumerate(messages[:-1]) if m.get("role") not in ("system", "developer")]


async def prune_messages(
    messages: list[dict[str, Any]], budget: int, n_ctx: int, count: TokenCounter
) -> ContextOutcome:
    """Drop the oldest non-system turns until the prompt fits `budget` tokens."""
    current = list(messages)
    dropped = 0
    tokens = await count(current)
    while tokens is not None and tokens > budget:
        droppable = _turn_indices(current)
        if not droppable:
            raise context_length_exceeded(tokens, n_ctx)
        del current[droppable[0]]
        dropped += 1
        tokens = await count(current)
    return ContextOutcome(current, "pruned" if dropped else "none", dropped)


async def summarize_messages(
    messages: list[dict[str, Any]],
    budget: int,
    n_ctx: int,
    count: TokenCounter,
    summarize: Summarizer,
) -> ContextOutcome:
    """Replace the older turns by one model-written summary (a system note), then prune if still too long."""
    tokens = await count(messages)
    if tokens is None or tokens <= budget:
        return ContextOutcome(messages, "none")
    droppable = _turn_indices(messages)
    keep_recent = set(droppable[-1:])  # the last exchange before the new message stays verbatim
    older = [messages[i] for i in droppable if i not in keep_recent]
    if not older:
        return await prune_messages(messages, budget, n_ctx, count)
    older_prunable = await prune_messages(
        [*older, {"role": "user", "content": ""}], budget // 2, n_ctx, count
    )
    summary = await summarize(older_prunable.messages[:-1])
    note = {"role": "system", "content": f"Summary of the earlier conversation: {summary.strip()}"}
    older_set = {i for i in droppable if i not in keep_recent}
    systems = [
        m
        for i, m in enumerate(messages)
        if i not in older_set and m.get("role") in ("system", "developer")
    ]
    rest = [
        m
        for i, m in enumerate(messages)
        if i not in older_set and m.get("role") not in ("system", "developer")
    ]
    outcome = await prune_messages([*systems, note, *rest], budget, n_ctx, count)
    return ContextOutcome(outcome.messages, "summarized", len(older) + outcome.dropped)


def summary_prompt(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    transcript = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in turns)
    return [
        {
            "role": "system",
            "content": "You summarize conversations in two or three short sentences.",
        },
        {"role": "user", "content": f"Summarize this conversation:\n{transcript}"},
    ]
