"""Prompt sets for training by reward (GRPO): a conversation to answer, and what its answers are
checked against.

A row is `{"prompt": "..."}` (optionally with `system`), `{"messages": [...]}` ending with a user
turn, or a training conversation ending with an assistant turn (the answer becomes `reference`).
Optional columns the rewards read: `must_include` and `must_not_include` (lists of phrases),
`reference` (text) and `response_format` (an OpenAI response_format). Every problem is located at
file:line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.data.formats import RowContext, openai_messages
from slmkit.data.readers import json_type, read_rows
from slmkit.data.records import DataLoadResult, Problem, display_path

PHRASE_COLUMNS = ("must_include", "must_not_include")
FORMAT_TYPES = ("json_object", "json_schema")


@dataclass
class PromptSet:
    """Rows as TRL's GRPOTrainer takes them (conversational `prompt` plus the checked columns)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def raise_for_errors(self) -> None:
        DataLoadResult(problems=self.problems).raise_for_errors()


def load_prompts(paths: list[Path]) -> PromptSet:
    """Every row of every file as a prompt row, or its problems."""
    result = PromptSet()
    for path in paths:
        shown = display_path(path)
        read = read_rows(path, shown)
        result.problems += read.problems
        for raw in read.rows:
            ctx = RowContext(shown, raw.line)
            row = prompt_row(raw.data, ctx)
            result.problems += ctx.problems
            if row is not None and not ctx.problems:
                result.rows.append(row)
    if not result.rows and not result.problems:
        shown = ", ".join(display_path(p) for p in paths) or "(none)"
        result.problems.append(Problem(shown, 0, "(file)", "no prompts found"))
    return result


def prompt_row(data: dict[str, Any], ctx: RowContext) -> dict[str, Any] | None:
    """One raw row -> `{"prompt", "must_include", "must_not_include", "reference",
    "response_format"}`, or None with the problems recorded in `ctx`."""
    reference = ctx.text(data, "reference", required=False, what="the reference answer") or ""
    if "messages" in data:
        messages = openai_messages(data["messages"], "messages", ctx, required=True)
        if messages and messages[-1]["role"] == "assistant":
            reference = reference or str(messages[-1].get("content") or "")
            messages = messages[:-1]
        if messages and messages[-1]["role"] != "user":
            ctx.error("messages", "does not end with a user turn (expected a question to answer)")
            return None
    elif "prompt" in data:
        text = ctx.text(data, "prompt", required=True, what="the question")
        system = ctx.text(data, "system", required=False, what="the system prompt")
        messages = [
            *([{"role": "system", "content": system}] if system else []),
            *([{"role": "user", "content": text}] if text else []),
        ]
    else:
        keys = ", ".join(sorted(data)) or "none"
        ctx.error("(record)", f"no prompt: keys {keys} (expected prompt or messages)")
        return None
    row: dict[str, Any] = {"prompt": messages, "reference": reference}
    for column in PHRASE_COLUMNS:
        row[column] = _phrases(data.get(column), column, ctx)
    row["response_format"] = _response_format(data.get("response_format"), ctx)
    return row if messages else None


def _phrases(value: Any, column: str, ctx: RowContext) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        ctx.error(column, f"wrong type {json_type(value)} (expected a list of non-empty strings)")
        return []
    return list(value)


def _response_format(value: Any, ctx: RowContext) -> str:
    """The response_format as JSON text ("" when absent): one column type for every row."""
    if value is None:
        return ""
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in FORMAT_TYPES:
        ctx.error(
            "response_format",
            f"expected an object with type {' or '.join(FORMAT_TYPES)} (got {json_type(value)}"
            + (f" of type {kind!r})" if isinstance(value, dict) else ")"),
        )
        return ""
    if kind == "json_schema" and not isinstance(
        (value.get("json_schema") or {}).get("schema"), dict
    ):
        ctx.error("response_format.json_schema.schema", "missing (expected a JSON schema object)")
        return ""
    return json.dumps(value)
