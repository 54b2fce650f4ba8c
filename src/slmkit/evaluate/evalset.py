"""Eval sets: JSONL, one question per line, with a reference answer and optional facts.

    {"prompt": "...", "reference": "...", "must_include": ["41 days"], "must_not_include": [], "tags": ["returns"]}

`messages` (OpenAI role/content list, ending with a user turn) may replace `prompt`; an optional
`system` string is prepended to a `prompt`. Problems raise `DataError` as `file:line: field: ...`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.data.readers import json_objects
from slmkit.errors import DataError

KNOWN_FIELDS = {
    "response_format",
    "prompt",
    "messages",
    "system",
    "reference",
    "must_include",
    "must_not_include",
    "tags",
    "id",
}
ROLES = {"system", "user", "assistant"}


@dataclass
class EvalItem:
    """One eval question."""

    line: int
    messages: list[dict[str, str]]
    reference: str
    must_include: list[str] = field(default_factory=list)
    must_not_include: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    id: str = ""
    response_format: dict[str, Any] | None = None  # the answer must be this JSON (json_valid)

    @property
    def question(self) -> str:
        """The last user turn (what tables show)."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")

    def prompt_key(self) -> str:
        """Hash of what the model sees (the messages), for the generation cache."""
        return hashlib.sha256(json.dumps(self.messages, sort_keys=True).encode()).hexdigest()


def load_eval_set(path: Path | str) -> list[EvalItem]:
    """Read and check an eval set; the first problem raises `DataError` naming file:line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: eval set not found") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    items = [
        parse_item(row, f"{path}:{number}", number)
        for number, row in json_objects(path, text, DataError)
    ]
    if not items:
        raise DataError(
            f"{path}: the eval set is empty",
            hint="one JSON object per line with prompt and reference",
        )
    return items


def parse_item(row: dict[str, Any], where: str, line: int) -> EvalItem:
    unknown = sorted(set(row) - KNOWN_FIELDS)
    if unknown:
        raise DataError(
            f"{where}: {unknown[0]}: unknown field; known: {', '.join(sorted(KNOWN_FIELDS))}"
        )
    reference = row.get("reference")
    if not isinstance(reference, str):
        raise DataError(
            f"{where}: reference: expected a string (the correct answer), got {_kind(reference)}"
        )
    return EvalItem(
        line=line,
        messages=_messages(row, where),
        reference=reference,
        must_include=_strings(row, "must_include", where),
        must_not_include=_strings(row, "must_not_include", where),
        tags=_strings(row, "tags", where),
        id=str(row.get("id", "")),
        response_format=_response_format(row, where),
    )


def _response_format(row: dict[str, Any], where: str) -> dict[str, Any] | None:
    """An OpenAI response_format (json_object or json_schema) the answer is checked against."""
    value = row.get("response_format")
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("json_object", "json_schema"):
        raise DataError(
            f"{where}: response_format: expected an object with type json_object or json_schema"
        )
    if kind == "json_schema" and not isinstance(
        (value.get("json_schema") or {}).get("schema"), dict
    ):
        raise DataError(
            f"{where}: response_format.json_schema.schema: expected a JSON schema object"
        )
    return value


def _messages(row: dict[str, Any], where: str) -> list[dict[str, str]]:
    if ("prompt" in row) == ("messages" in row):
        raise DataError(f"{where}: prompt: give exactly one of `prompt` or `messages`")
    if "prompt" in row:
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: prompt: expected a non-empty string, got {_kind(prompt)}")
        system = row.get("system")
        if system is not None and not isinstance(system, str):
            raise DataError(f"{where}: system: expected a string, got {_kind(system)}")
        head = [{"role": "system", "content": system}] if system else []
        return [*head, {"role": "user", "content": prompt}]
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: messages: expected a non-empty list of {{role, content}}")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise DataError(
                f"{where}: messages[{i}].role: expected one of {', '.join(sorted(ROLES))}"
            )
        if not isinstance(message.get("content"), str):
            raise DataError(f"{where}: messages[{i}].content: expected a string")
        out.append({"role": message["role"], "content": message["content"]})
    if out[-1]["role"] != "user":
        raise DataError(f"{where}: messages: the last message must be the user's question")
    return out


def _strings(row: dict[str, Any], name: str, where: str) -> list[str]:
    value = row.get(name, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise DataError(
            f"{where}: {name}: expected a list of non-empty strings, got {_kind(value)}"
        )
    return list(value)


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__
