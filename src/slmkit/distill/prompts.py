"""Read a prompts file (JSONL rows with `prompt` or `messages`, or .txt lines) into `PromptRow`s,
each keyed by its `id` or by a hash of its messages; bad rows are `file:line` errors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.data.readers import decode_utf8, json_type, read_rows
from slmkit.errors import DataError

ROLES = ("system", "user", "assistant")


@dataclass
class PromptRow:
    """One prompt: where it is, its key for resume, the conversation and the facts it must hold."""

    line: int
    key: str
    messages: list[dict[str, str]]
    must_include: list[str] = field(default_factory=list)


def prompt_key(messages: list[dict[str, str]]) -> str:
    """The key of a prompt without an id: a hash of its messages."""
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
    return "sha256-" + digest[:16]


def read_prompts(path: Path) -> list[PromptRow]:
    """Every prompt of `path` in file order; the first bad row is a DataError naming its line."""
    if not path.is_file():
        raise DataError(f"{path}: prompts file not found")
    if path.suffix.lower() == ".txt":
        return _read_text(path)
    result = read_rows(path, str(path))
    if result.problems:
        raise DataError(str(result.problems[0]))
    rows = [_row(raw.data, f"{path}:{raw.line}", raw.line) for raw in result.rows]
    _check_ids(rows, path)
    if not rows:
        raise DataError(f"{path}: no prompts")
    return rows


def _read_text(path: Path) -> list[PromptRow]:
    text, problem = decode_utf8(path.read_bytes(), str(path))
    if problem is not None:
        raise DataError(str(problem))
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            messages = [{"role": "user", "content": line.strip()}]
            rows.append(PromptRow(number, prompt_key(messages), messages))
    if not rows:
        raise DataError(f"{path}: no prompts (expected one prompt per line)")
    return rows


def _row(data: dict[str, Any], where: str, line: int) -> PromptRow:
    prompt, messages = data.get("prompt"), data.get("messages")
    if (prompt is None) == (messages is None):
        raise DataError(
            f"{where}: prompt: give either `prompt` (a string) or `messages` (a list), "
            f"got {'both' if prompt is not None else 'neither'}"
        )
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(
                f"{where}: prompt: expected a non-empty string, got {json_type(prompt)}"
            )
        conversation = [{"role": "user", "content": prompt}]
    else:
        conversation = _messages(messages, where)
    must = data.get("must_include", [])
    if not isinstance(must, list) or not all(isinstance(m, str) and m.strip() for m in must):
        raise DataError(f"{where}: must_include: expected a list of non-empty strings")
    row_id = data.get("id")
    if row_id is not None and (isinstance(row_id, bool) or not isinstance(row_id, (str, int))):
        raise DataError(f"{where}: id: expected a string or an integer, got {json_type(row_id)}")
    key = str(row_id) if row_id is not None else prompt_key(conversation)
    return PromptRow(line, key, conversation, list(must))


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: messages: expected a non-empty list of {{role, content}}")
    out = []
    for i, item in enumerate(value):
        role = item.get("role") if isinstance(item, dict) else None
        content = item.get("content") if isinstance(item, dict) else None
        if role not in ROLES or not isinstance(content, str) or not content.strip():
            raise DataError(
                f"{where}: messages[{i}]: expected {{role: system|user|assistant, content: "
                "non-empty string}"
            )
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise DataError(
            f"{where}: messages: the last message must be the user's (the teacher answers it)"
        )
    return out


def _check_ids(rows: list[PromptRow], path: Path) -> None:
    """Two rows with the same id would overwrite each other's answer on resume."""
    seen: dict[str, PromptRow] = {}
    for row in rows:
        first = seen.setdefault(row.key, row)
        if first is not row and first.messages != row.messages:
            raise DataError(
                f"{path}:{row.line}: id: {row.key!r} is already used on line {first.line} "
                "for another prompt (ids must be unique)"
            )
