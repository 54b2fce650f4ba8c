"""Detect the format of a raw row and normalise it to a `Record`, reporting every problem located.

Formats: alpaca (instruction/input/output, optional system/history), sharegpt (conversations with
from/value), messages (OpenAI role/content, incl. tool_calls), preference (prompt/chosen/rejected as
strings or message lists; also alpaca/sharegpt rows with chosen/rejected), text (plain `text`).
An alpaca, sharegpt or messages row with a `label` of true/false is an unpaired rating (KTO): the
conversation's last answer was good (true) or bad (false).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from slmkit.data.readers import json_type
from slmkit.data.records import Problem, Record
from slmkit.models.reasoning import FIELDS as REASONING_FIELDS
from slmkit.models.reasoning import normalize_message

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class ShareGPTTags:
    """How a sharegpt-style file names its keys and roles (LLaMA-Factory's `tags`)."""

    messages_key: str = "conversations"
    role_tag: str = "from"
    content_tag: str = "value"
    user: tuple[str, ...] = ("human", "user")
    assistant: tuple[str, ...] = ("gpt", "assistant", "model", "bot")
    system: tuple[str, ...] = ("system",)
    function: tuple[str, ...] = ("function_call",)
    observation: tuple[str, ...] = ("observation", "tool")
    system_key: str = "system"

    def role_of(self, name: str) -> str | None:
        for role, names in (
            ("user", self.user),
            ("assistant", self.assistant),
            ("system", self.system),
            ("function", self.function),
            ("tool", self.observation),
        ):
            if name in names:
                return role
        return None

    def known(self) -> str:
        return ", ".join(
            self.user + self.assistant + self.system + self.function + self.observation
        )


@dataclass
class AlpacaColumns:
    """Column names of an alpaca-style file (LLaMA-Factory's `columns`)."""

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    system: str = "system"
    history: str = "history"


@dataclass
class RowContext:
    """Collects the problems of one row, each located at file:line."""

    file: str
    line: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"

    def error(self, field_name: str, message: str) -> None:
        self.problems.append(Problem(self.file, self.line, field_name, message, "error"))

    def warn(self, field_name: str, message: str) -> None:
        self.problems.append(Problem(self.file, self.line, field_name, message, "warning"))

    def text(self, data: dict[str, Any], key: str, *, required: bool, what: str) -> str | None:
        """A string field: missing/empty/wrong type are errors when required; None when absent."""
        if key not in data or data[key] is None:
            if required:
                self.error(key, f"missing (expected {what} as a non-empty string)")
            return None
        value = data[key]
        if not isinstance(value, str):
            self.error(key, f"wrong type {json_type(value)} (expected {what} as a string)")
            return None
        if required and not value.strip():
            self.error(key, f"empty (expected {what} as a non-empty string)")
            return None
        return value


def detect_format(data: dict[str, Any]) -> str | None:
    """The format a row looks like from its keys, or None."""
    if "chosen" in data and "rejected" in data:
        return "preference"
    if "messages" in data:
        return "messages"
    if "conversations" in data:
        return "sharegpt"
    if "instruction" in data or "output" in data:
        return "alpaca"
    if "text" in data:
        return "text"
    return None


def normalise(
    data: dict[str, Any],
    fmt: str,
    ctx: RowContext,
    *,
    tags: ShareGPTTags | None = None,
    columns: AlpacaColumns | None = None,
) -> Record | None:
    """One raw row in format `fmt` -> a Record, or None when it has errors (recorded in ctx)."""
    before = len([p for p in ctx.problems if p.severity == "error"])
    if fmt == "alpaca":
        messages = alpaca_messages(data, ctx, columns or AlpacaColumns())
        record = Record(messages or [], ctx.source) if messages else None
    elif fmt == "sharegpt":
        messages = sharegpt_messages(data, ctx, tags or ShareGPTTags())
        record = Record(messages or [], ctx.source) if messages else None
    elif fmt == "messages":
        messages = openai_messages(data.get("messages"), "messages", ctx, required=True)
        record = Record(messages, ctx.source) if messages else None
    elif fmt == "preference":
        record = preference_record(data, ctx, tags=tags, columns=columns)
    elif fmt == "text":
        text = ctx.text(data, "text", required=True, what="the document text")
        record = Record([], ctx.source, kind="text", text=text) if text else None
    else:
        raise ValueError(f"unknown format {fmt!r}")
    if record is not None and record.kind != "text":
        _split_reasoning(record, ctx, _messages_field(fmt, tags))
    if record is not None and record.kind == "sft":
        check_conversation(record.messages, ctx, _messages_field(fmt, tags))
        _unpaired_label(record, data, ctx)
    if record is not None and fmt != "text":
        record.tools = tool_schemas(data.get("tools"), "tools", ctx)
    errors = len([p for p in ctx.problems if p.severity == "error"])
    return record if errors == before else None


LABEL = "label"  # an unpaired rating's field (LLaMA-Factory's `kto_tag` column is renamed to it)


def _unpaired_label(record: Record, data: dict[str, Any], ctx: RowContext) -> None:
    """A conversation row with `label: true|false` becomes an unpaired rating of its last answer."""
    if LABEL not in data:
        return
    value = data[LABEL]
    if not isinstance(value, bool):
        ctx.error(
            LABEL,
            f"wrong type {json_type(value)} (expected true or false: was the last answer good?)",
        )
        return
    record.kind, record.label = "unpaired", value


def _split_reasoning(record: Record, ctx: RowContext, field_name: str) -> None:
    """Reasoning in `reasoning_content` (also from LLaMA-Factory's inline `<think>...</think>`); an
    assistant turn that is all reasoning and no answer is an error."""
    for name, messages in (("", record.messages), ("rejected", record.rejected)):
        if messages is None:
            continue
        for i, message in enumerate(messages):
            messages[i] = normalize_message(message)
            if (
                messages[i].get("reasoning_content") is not None
                and not str(messages[i].get("content") or "").strip()
                and not messages[i].get("tool_calls")
            ):
                ctx.error(
                    f"{name or field_name}[{i}]",
                    "reasoning but no answer after it (expected the reply after </think>)",
                )


def _messages_field(fmt: str, tags: ShareGPTTags | None) -> str:
    if fmt == "sharegpt":
        return (tags or ShareGPTTags()).messages_key
    return "messages" if fmt == "messages" else "output"


def check_conversation(messages: list[dict[str, Any]], ctx: RowContext, field_name: str) -> None:
    """Structural rules of a trainable conversation: has an assistant turn and ends with one."""
    if not messages:
        return
    if not any(m["role"] == "assistant" for m in messages):
        ctx.error(
            field_name, "no assistant turn (expected at least one assistant reply to learn from)"
        )
        return
    if messages[-1]["role"] != "assistant":
        ctx.error(
            f"{field_name}[{len(messages) - 1}]",
            f"conversation ends with a {messages[-1]['role']} turn "
            "(expected the last turn to be the assistant's reply)",
        )
    first = next((m for m in messages if m["role"] != "system"), None)
    if first is not None and first["role"] == "assistant":
        ctx.warn(
            field_name, "conversation starts with an assistant turn (expected a user turn first)"
        )


def alpaca_messages(
    data: dict[str, Any], ctx: RowContext, cols: AlpacaColumns, *, with_output: bool = True
) -> list[dict[str, Any]] | None:
    instruction = ctx.text(
        data, cols.instruction, required=True, what="the instruction (user prompt)"
    )
    extra = ctx.text(data, cols.input, required=False, what="the optional input")
    output = ctx.text(data, cols.output, required=True, what="the answer") if with_output else None
    system = ctx.text(data, cols.system, required=False, what="the system prompt")
    history = _alpaca_history(data.get(cols.history), cols.history, ctx)
    if instruction is None or (with_output and output is None) or history is None:
        return None
    messages: list[dict[str, Any]] = (
        [{"role": "system", "content": system}] if system and system.strip() else []
    )
    messages += history
    prompt = instruction + ("\n" + extra if extra and extra.strip() else "")
    messages.append({"role": "user", "content": prompt})
    if output is not None:
        messages.append({"role": "assistant", "content": output})
    return messages


def _alpaca_history(value: Any, key: str, ctx: RowContext) -> list[dict[str, Any]] | None:
    if value is None or value == "":
        return []
    if not isinstance(value, list):
        ctx.error(key, f"wrong type {json_type(value)} (expected a list of [prompt, answer] pairs)")
        return None
    turns: list[dict[str, Any]] = []
    for i, pair in enumerate(value):
        ok = (
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and all(isinstance(x, str) and x.strip() for x in pair)
        )
        if not ok:
            ctx.error(f"{key}[{i}]", "not a [prompt, answer] pair (expected two non-empty strings)")
            return None
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns


def sharegpt_messages(
    data: dict[str, Any], ctx: RowContext, tags: ShareGPTTags, key: str | None = None
) -> list[dict[str, Any]] | None:
    key = key or tags.messages_key
    turns = data.get(key)
    if turns is None:
        ctx.error(key, 'missing (expected a list of turns like {"from": "human", "value": "..."})')
        return None
    if not isinstance(turns, list):
        ctx.error(key, f"wrong type {json_type(turns)} (expected a list of turns)")
        return None
    if not turns:
        ctx.error(key, "empty list (expected at least a human turn and a gpt turn)")
        return None
    messages: list[dict[str, Any]] = []
    system = data.get(tags.system_key)
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    ok = True
    for i, turn in enumerate(turns):
        message = _sharegpt_turn(turn, f"{key}[{i}]", ctx, tags)
        ok = ok and message is not None
        if message is not None:
            messages.append(message)
    return messages if ok else None


def _sharegpt_turn(
    turn: Any, where: str, ctx: RowContext, tags: ShareGPTTags
) -> dict[str, Any] | None:
    if not isinstance(turn, dict):
        ctx.error(
            where,
            f"wrong type {json_type(turn)} (expected an object with "
            f'"{tags.role_tag}" and "{tags.content_tag}")',
        )
        return None
    name = turn.get(tags.role_tag)
    if not isinstance(name, str):
        ctx.error(
            f"{where}.{tags.role_tag}", f"missing or not a string (expected one of {tags.known()})"
        )
        return None
    role = tags.role_of(name)
    if role is None:
        ctx.error(
            f"{where}.{tags.role_tag}", f"unknown role {name!r} (expected one of {tags.known()})"
        )
        return None
    content = ctx.text(turn, tags.content_tag, required=True, what=f"the text of this {name} turn")
    if content is None:
        ctx.problems[-1].field = f"{where}.{tags.content_tag}"
        return None
    if role == "function":
        return _function_call_message(content, f"{where}.{tags.content_tag}", ctx)
    return {"role": role, "content": content}


def _function_call_message(content: str, where: str, ctx: RowContext) -> dict[str, Any] | None:
    """A sharegpt function_call turn -> an assistant message with tool_calls."""
    try:
        call = json.loads(content)
    except json.JSONDecodeError:
        ctx.error(where, 'function_call is not JSON (expected {"name": ..., "arguments": {...}})')
        return None
    calls = call if isinstance(call, list) else [call]
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        ctx.error(
            where, 'function_call needs a "name" (expected {"name": ..., "arguments": {...}})'
        )
        return None
    tool_calls = [
        {"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments", {})}}
        for c in calls
    ]
    return {"role": "assistant", "content": "", "tool_calls": tool_calls}


def tool_schemas(value: Any, key: str, ctx: RowContext) -> list[dict[str, Any]] | None:
    """The `tools` a record shows the model (a list, or LLaMA-Factory's JSON string), in OpenAI form."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            ctx.error(key, f"not JSON ({exc.msg}; expected a JSON list of function schemas)")
            return None
    items = value if isinstance(value, list) else [value]
    tools = [_tool_schema(item) for item in items]
    if not all(tools):
        ctx.error(
            key,
            'malformed (expected a list of {"name": ..., "description": ..., "parameters": {...}})',
        )
        return None
    return [t for t in tools if t is not None]


def _tool_schema(item: Any) -> dict[str, Any] | None:
    """One function schema in OpenAI form, or None when it has no name."""
    if not isinstance(item, dict):
        return None
    function = item.get("function", item)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        return None
    return {"type": "function", "function": function}


def openai_messages(
    value: Any, key: str, ctx: RowContext, *, required: bool
) -> list[dict[str, Any]]:
    """Validate an OpenAI-style message list; returns [] (with errors recorded) when it is unusable."""
    if value is None:
        if required:
            ctx.error(key, 'missing (expected a list of {"role": ..., "content": ...} messages)')
        return []
    if not isinstance(value, list):
        ctx.error(key, f"wrong type {json_type(value)} (expected a list of messages)")
        return []
    if not value:
        ctx.error(key, "empty list (expected at least a user and an assistant message)")
        return []
    messages = [_openai_message(m, f"{key}[{i}]", ctx) for i, m in enumerate(value)]
    return [m for m in messages if m is not None] if all(m is not None for m in messages) else []


def _openai_message(item: Any, where: str, ctx: RowContext) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        ctx.error(where, f'wrong type {json_type(item)} (expected {{"role": ..., "content": ...}})')
        return None
    role = item.get("role")
    if role not in ROLES:
        what = "missing" if role is None else f"unknown role {role!r}"
        ctx.error(f"{where}.role", f"{what} (expected one of {', '.join(ROLES)})")
        return None
    tool_calls = item.get("tool_calls")
    if tool_calls is not None and not _valid_tool_calls(tool_calls):
        ctx.error(
            f"{where}.tool_calls",
            'malformed (expected a list of {"type": "function", '
            '"function": {"name": ..., "arguments": ...}})',
        )
        return None
    content = _content_text(
        item.get("content"), f"{where}.content", ctx, allow_empty=bool(tool_calls)
    )
    if content is None:
        return None
    message: dict[str, Any] = {"role": role, "content": content}
    for extra in ("tool_calls", "name", "tool_call_id"):
        if item.get(extra) is not None:
            message[extra] = item[extra]
    for key in REASONING_FIELDS:
        value = item.get(key)
        if value is None:
            continue
        if role != "assistant" or not isinstance(value, str):
            ctx.error(f"{where}.{key}", "expected a string on an assistant message (its reasoning)")
            return None
        message["reasoning_content"] = value
    return message


def _content_text(value: Any, where: str, ctx: RowContext, *, allow_empty: bool) -> str | None:
    if value is None and allow_empty:
        return ""
    if isinstance(value, list):  # content parts: only text parts can be trained on here
        texts = [p.get("text") for p in value if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) != len(value) or not all(isinstance(t, str) for t in texts):
            ctx.error(
                where,
                'unsupported content parts (expected a string or a list of {"type": "text", '
                '"text": ...} parts)',
            )
            return None
        value = "".join(texts)  # type: ignore[arg-type]
    if value is None:
        ctx.error(where, "missing (expected the message text as a non-empty string)")
        return None
    if not isinstance(value, str):
        ctx.error(where, f"wrong type {json_type(value)} (expected the message text as a string)")
        return None
    if not value.strip() and not allow_empty:
        ctx.error(where, "empty (expected the message text as a non-empty string)")
        return None
    return value


def _valid_tool_calls(value: Any) -> bool:
    if not isinstance(value, list) or not value:
        return False
    for call in value:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return False
    return True


def preference_record(
    data: dict[str, Any],
    ctx: RowContext,
    *,
    tags: ShareGPTTags | None = None,
    columns: AlpacaColumns | None = None,
) -> Record | None:
    """prompt + chosen/rejected (strings, one message, or message lists) -> a preference Record."""
    tags = tags or ShareGPTTags()
    prompt = _preference_prompt(data, ctx, tags, columns or AlpacaColumns())
    chosen = _preference_branch(data, "chosen", prompt, ctx, tags)
    rejected = _preference_branch(data, "rejected", prompt, ctx, tags)
    if prompt is None or chosen is None or rejected is None:
        return None
    if not prompt and len(chosen) > 1:  # implicit prompt: both branches hold the full conversation
        prompt, chosen, rejected = _split_common_prefix(chosen, rejected)
    if not any(m["role"] == "user" for m in prompt):
        ctx.error(
            "prompt", "missing (expected a prompt string or messages ending with a user turn)"
        )
        return None
    if prompt[-1]["role"] != "user":
        ctx.error(
            "prompt", f"prompt ends with an {prompt[-1]['role']} turn (expected a user turn last)"
        )
        return None
    if chosen == rejected:
        ctx.warn(
            "rejected",
            "identical to chosen (expected two different answers; this pair teaches nothing)",
        )
    return Record(prompt + chosen, ctx.source, kind="preference", rejected=prompt + rejected)


def _preference_prompt(
    data: dict[str, Any], ctx: RowContext, tags: ShareGPTTags, cols: AlpacaColumns
) -> list[dict[str, Any]] | None:
    system = data.get("system")
    head = (
        [{"role": "system", "content": system}]
        if isinstance(system, str) and system.strip()
        else []
    )
    if "prompt" in data:
        value = data["prompt"]
        if isinstance(value, str):
            if not value.strip():
                ctx.error(
                    "prompt", "empty (expected the prompt as a non-empty string or a message list)"
                )
                return None
            return [*head, {"role": "user", "content": value}]
        messages = openai_messages(value, "prompt", ctx, required=True)
        return messages or None
    if tags.messages_key in data:
        return sharegpt_messages(data, ctx, tags)
    if cols.instruction in data:
        return alpaca_messages(data, ctx, cols, with_output=False)
    return []  # implicit prompt inside chosen/rejected


def _preference_branch(
    data: dict[str, Any],
    key: str,
    prompt: list[dict[str, Any]] | None,
    ctx: RowContext,
    tags: ShareGPTTags,
) -> list[dict[str, Any]] | None:
    value = data.get(key)
    if isinstance(value, str):
        if not value.strip():
            ctx.error(key, "empty (expected the answer as a non-empty string)")
            return None
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        if tags.role_tag in value and "role" not in value:
            message = _sharegpt_turn(value, key, ctx, tags)
        else:
            message = _openai_message(value, key, ctx)
        if message is not None and message["role"] != "assistant":
            ctx.error(f"{key}.role", f"role {message['role']!r} (expected the assistant's answer)")
            return None
        return [message] if message is not None else None
    if isinstance(value, list):
        messages = openai_messages(value, key, ctx, required=True)
        if not messages:
            return None
        if prompt and messages[: len(prompt)] == prompt:
            messages = messages[len(prompt) :]
        if prompt and (not messages or messages[-1]["role"] != "assistant"):
            ctx.error(
                key,
                "expected the assistant's answer (a message list ending with an assistant turn)",
            )
            return None
        return messages
    what = "missing" if value is None else f"wrong type {json_type(value)}"
    ctx.error(
        key, f"{what} (expected the answer as a string, an assistant message or a message list)"
    )
    return None


def _split_common_prefix(
    chosen: list[dict[str, Any]], rejected: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]
