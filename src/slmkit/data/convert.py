"""`slm data convert`: write records as messages, alpaca or sharegpt rows (JSONL or JSON array)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slmkit.data.records import Problem, Record

TARGETS = ("messages", "alpaca", "sharegpt")
_SHAREGPT_ROLE = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}


class ConvertError(Exception):
    """A record that the target format cannot express."""


def convert_records(records: list[Record], to: str) -> tuple[list[dict[str, Any]], list[Problem]]:
    if to not in TARGETS:
        raise ValueError(f"unknown target {to!r}; expected one of {TARGETS}")
    rows, problems = [], []
    for record in records:
        try:
            rows.append(record_to_row(record, to))
        except ConvertError as exc:
            file, _, line = record.source.rpartition(":")
            problems.append(Problem(file, int(line), "(record)", str(exc)))
    return rows, problems


def record_to_row(record: Record, to: str) -> dict[str, Any]:
    row = _content_row(record, to)
    if record.tools:  # sharegpt keeps LLaMA-Factory's JSON string
        functions = [tool["function"] for tool in record.tools]
        row["tools"] = (
            record.tools if to == "messages" else json.dumps(functions, ensure_ascii=False)
        )
    return row


def _content_row(record: Record, to: str) -> dict[str, Any]:
    if record.kind == "text":
        return {"text": record.text}
    if record.kind == "preference":
        return _preference_row(record, to)
    if to == "messages":
        return {"messages": record.messages}
    if to == "sharegpt":
        return _sharegpt_row(record.messages)
    return _alpaca_row(record.messages)


def _preference_row(record: Record, to: str) -> dict[str, Any]:
    prompt = record.prompt_messages()
    chosen, rejected = record.messages[len(prompt) :], (record.rejected or [])[len(prompt) :]
    if to == "messages":
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if len(chosen) != 1 or len(rejected) != 1:
        raise ConvertError(
            f"multi-turn chosen/rejected cannot be written as {to} (expected --to messages)"
        )
    if to == "sharegpt":
        row = _sharegpt_row(prompt)
        row["chosen"] = _sharegpt_turn(chosen[0])
        row["rejected"] = _sharegpt_turn(rejected[0])
        return row
    row = _alpaca_row([*prompt, chosen[0]])
    del row["output"]
    row["chosen"], row["rejected"] = chosen[0]["content"], rejected[0]["content"]
    return row


def _sharegpt_row(messages: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    if messages and messages[0]["role"] == "system":
        row["system"] = messages[0]["content"]
        messages = messages[1:]
    row["conversations"] = [_sharegpt_turn(m) for m in messages]
    return row


def _sharegpt_turn(message: dict[str, Any]) -> dict[str, str]:
    if message["role"] == "system":
        raise ConvertError(
            "a system message after the first turn cannot be written as sharegpt "
            "(expected --to messages)"
        )
    if message.get("tool_calls"):
        if message.get("content"):
            raise ConvertError(
                "an assistant turn with both text and tool calls cannot be written as sharegpt "
                "(expected --to messages)"
            )
        calls = [c.get("function", c) for c in message["tool_calls"]]
        return {
            "from": "function_call",
            "value": json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False),
        }
    return {"from": _SHAREGPT_ROLE[message["role"]], "value": message["content"]}


def _alpaca_row(messages: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    roles = [m["role"] for m in turns]
    if (
        len(turns) % 2
        or roles != ["user", "assistant"] * (len(turns) // 2)
        or any(m.get("tool_calls") for m in turns)
    ):
        raise ConvertError(
            "only alternating user/assistant turns (after an optional system prompt) can be "
            "written as alpaca (expected --to messages or sharegpt)"
        )
    row["instruction"], row["input"], row["output"] = turns[-2]["content"], "", turns[-1]["content"]
    if system is not None:
        row["system"] = system
    if len(turns) > 2:
        row["history"] = [
            [turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 2, 2)
        ]
    return row


def write_rows(rows: list[dict[str, Any]], out: Path) -> None:
    """JSON array for `.json`, JSON lines otherwise; UTF-8 without escaping non-ASCII text."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(rows, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return
    with out.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
