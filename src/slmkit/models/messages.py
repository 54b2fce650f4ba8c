"""Messages as a chat template can render them, the same way for training and for serving.

Templates differ in what they accept: some know nothing of tools (the schemas then go in the
system prompt, tool calls become JSON text), some have no system role (its text joins the next
turn, llama-server's rule), and reasoning goes where `models.reasoning` says.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from slmkit.models import reasoning


def template_knows_tools(chat_template: str) -> bool:
    """Whether a chat template renders the `tools` it is given (else they go in the system prompt)."""
    return "tools" in chat_template


TOOLS_PREAMBLE = (
    "You can call these functions. To call one, answer with a JSON object "
    '{"name": <function name>, "arguments": <arguments object>}:'
)


def prepare_messages(
    messages: list[dict[str, Any]],
    chat_template: str,
    tools: list[dict[str, Any]] | None = None,
    *,
    keep_reasoning: bool = False,
) -> list[dict[str, Any]]:
    """Messages as a template can render them: for templates that know nothing of tools, the tool
    schemas go in the system prompt and tool calls become JSON text in the assistant's content; a
    system prompt for a template without a system role joins the next turn, as llama-server does
    it; earlier answers' reasoning as `models.reasoning.for_history` says (`keep_reasoning` leaves
    it in place, for training, which decides per turn)."""
    if tools and not template_knows_tools(chat_template):
        messages = _tools_in_system_prompt(messages, tools)
    if not keep_reasoning:
        messages = reasoning.for_history(messages, chat_template)
    if messages and messages[0].get("role") == "system" and not supports_system_role(chat_template):
        messages = _system_into_next_turn(messages)
    if "tool_calls" in chat_template:
        return messages
    prepared = []
    for message in messages:
        if message.get("tool_calls"):
            calls = [c.get("function", c) for c in message["tool_calls"]]
            text = json.dumps(calls if len(calls) > 1 else calls[0], ensure_ascii=False)
            message = {k: v for k, v in message.items() if k != "tool_calls"}
            message["content"] = _append_text(message.get("content"), text)
        prepared.append(message)
    return prepared


def _append_text(content: Any, text: str) -> Any:
    """`text` after a message's content: a string, None, or a list of content parts."""
    if isinstance(content, list):
        return [*content, {"type": "text", "text": text}]
    return (content or "") + text


def _tools_in_system_prompt(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    listing = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    text = f"{TOOLS_PREAMBLE}\n{listing}"
    if messages and messages[0]["role"] == "system":
        system = {**messages[0], "content": _append_text(messages[0].get("content"), f"\n\n{text}")}
        return [system, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


@functools.lru_cache(maxsize=32)
def supports_system_role(chat_template: str) -> bool:
    """Whether a template renders a system message (Gemma's refuses one; some drop it silently)."""
    from slmkit.models.templates import render_plain

    marker = "SYSTEM-PROMPT-PROBE"
    probe = [{"role": "system", "content": marker}, {"role": "user", "content": "Hi"}]
    try:
        return marker in render_plain(chat_template, probe, generation_prompt=True)
    except Exception:
        return False


def _system_into_next_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """llama-server's rule for templates without a system role: the system text, a newline, then
    the first turn's text; a lone system message is dropped."""
    system, rest = messages[0], messages[1:]
    if not rest:
        return []
    first = {**rest[0], "content": f"{system.get('content') or ''}\n{rest[0].get('content') or ''}"}
    return [first, *rest[1:]]
