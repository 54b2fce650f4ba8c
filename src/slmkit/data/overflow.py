"""Over-long samples under `data.overflow: truncate`: the prompt is cut from its start so the answer
keeps its tokens.

Order of cuts: whole exchanges, oldest first (the system prompt stays); then tokens from the start of
the earliest remaining user/tool text. The prompt is never cut below half of `cutoff_len`; when the
answer alone is longer than the other half, its end is cut instead (LLaMA-Factory splits the cutoff
between prompt and response the same way). A preference pair is fitted to its longer answer, so
chosen and rejected keep the same prompt.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from slmkit.data.records import Record

if TYPE_CHECKING:
    from slmkit.data.template import ChatRenderer

Messages = list[dict[str, Any]]
_RETRIES = 3  # BPE merges at a new text boundary can move a count by a token or two


def shorten_record(record: Record, renderer: ChatRenderer, cutoff_len: int) -> tuple[Record, str]:
    """`record` with its prompt cut to fit `cutoff_len` as far as the rules allow, and what was cut."""
    prompt = record.prompt_messages()
    replies = [record.messages[len(prompt) :]]
    if record.rejected is not None:
        replies.append(record.rejected[len(prompt) :])

    def measure(turns: Messages) -> tuple[int, int]:
        prompt_len = renderer.length(turns, record.tools, generation_prompt=True)
        return prompt_len, max(renderer.length(turns + r, record.tools) for r in replies)

    shortened, dropped, cut = shorten_prompt(prompt, measure, renderer.tokenizer, cutoff_len)
    fitted = replace(
        record,
        messages=shortened + replies[0],
        rejected=shortened + replies[1] if record.rejected is not None else None,
    )
    return fitted, _describe(dropped, cut, measure(shortened)[1], cutoff_len)


def shorten_prompt(
    prompt: Messages, measure: Any, tokenizer: Any, cutoff_len: int
) -> tuple[Messages, int, int]:
    """(shorter prompt, turns dropped, tokens cut); `measure(prompt)` gives (prompt, total) tokens."""
    floor = cutoff_len // 2
    dropped = cut = 0
    prompt_len, total = measure(prompt)
    while total > cutoff_len and prompt_len > floor:
        shorter = _drop_oldest_exchange(prompt)
        if shorter is None:
            break
        dropped += len(prompt) - len(shorter)
        prompt = shorter
        prompt_len, total = measure(prompt)
    for _ in range(_RETRIES):
        wanted = min(total - cutoff_len, prompt_len - floor)
        if wanted <= 0:
            break
        prompt, removed = _cut_text_start(prompt, wanted, tokenizer)
        if removed == 0:
            break
        cut += removed
        prompt_len, total = measure(prompt)
    return prompt, dropped, cut


def _drop_oldest_exchange(prompt: Messages) -> Messages | None:
    """The prompt without its first exchange (user turn up to the next user turn), system kept."""
    head = 0
    while head < len(prompt) and prompt[head]["role"] == "system":
        head += 1
    users = [i for i in range(head, len(prompt)) if prompt[i]["role"] == "user"]
    if len(users) < 2:
        return None
    return prompt[:head] + prompt[users[1] :]


def _cut_text_start(prompt: Messages, wanted: int, tokenizer: Any) -> tuple[Messages, int]:
    """Remove up to `wanted` tokens from the start of the earliest user/tool texts (one token of
    each is kept so no turn is left empty)."""
    shortened, removed = [], 0
    for message in prompt:
        if removed < wanted and message["role"] in ("user", "tool") and message.get("content"):
            ids = tokenizer(message["content"], add_special_tokens=False)["input_ids"]
            take = max(min(wanted - removed, len(ids) - 1), 0)
            if take:
                message = {**message, "content": tokenizer.decode(ids[take:])}
                removed += take
        shortened.append(message)
    return shortened, removed


def _describe(dropped: int, cut: int, total: int, cutoff_len: int) -> str:
    parts = [f"{dropped} oldest turn(s) dropped"] if dropped else []
    parts += [f"{cut} token(s) cut from the start of the prompt"] if cut else []
    how = "prompt cut from its start (" + ", ".join(parts) + ")" if parts else "prompt kept"
    if total > cutoff_len:
        return f"{how}; the answer is longer than half of cutoff_len, its end cut"
    return f"{how}; the answer keeps all its tokens"
