"""Read the gateway's audit log for the improvement loop: answered requests with their latest
feedback, the conversation as it was asked, and the dates a user types."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.serve.audit_schema import reading
from slmkit.state.sql import query

HINT = "run `slm serve` first, or pass --audit / --config"

GENERATION_ENDPOINTS = ("chat", "completions")
# requests columns read here that older audit files may lack (an old file is read as it is)
OPTIONAL_COLUMNS = ("route_reason", "served_by", "prompt_messages", "version")
_ROLE_LINE = re.compile(r"^(system|user|assistant|tool|developer|function): ", re.MULTILINE)


@dataclass
class FeedbackRow:
    """One answered request and the latest feedback on it (None when it got none)."""

    id: str
    ts: float
    model: str | None
    endpoint: str
    prompt_text: str | None
    response_text: str | None
    prompt_messages: list[dict[str, Any]] | None
    route_reason: str | None
    served_by: str | None
    rating: int | None = None
    correction: str | None = None
    tags: list[str] = field(default_factory=list)

    @property
    def escalated(self) -> bool:
        return (self.route_reason or "").startswith("escalated")

    @property
    def answered_by(self) -> str | None:
        return self.served_by or self.model

    def conversation(self) -> list[dict[str, Any]] | None:
        """The messages as asked (stored JSON, else parsed from the flattened prompt text)."""
        if self.prompt_messages is not None:
            return self.prompt_messages
        if self.prompt_text is None:
            return None
        if self.endpoint != "chat":
            return [{"role": "user", "content": self.prompt_text}]
        return parse_flat_prompt(self.prompt_text)


def parse_flat_prompt(text: str) -> list[dict[str, Any]]:
    """`role: content` lines (the audit's `prompt_text` of a chat) back to messages; a line that
    does not start with a role continues the previous message (audit files older than
    `prompt_messages`)."""
    starts = list(_ROLE_LINE.finditer(text))
    if not starts or starts[0].start() != 0:
        return [{"role": "user", "content": text}]
    messages = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() - 1 if i + 1 < len(starts) else len(text)
        messages.append({"role": match.group(1), "content": text[match.end() : end]})
    return messages


def read_rows(
    path: Path | str,
    since: float | None = None,
    until: float | None = None,
    model: str | None = None,
) -> list[FeedbackRow]:
    """Answered generation requests in [since, until), each with its LATEST feedback.

    `model` matches the public model id asked for or the model that answered (a route's member).
    """
    with reading(path, HINT) as conn:
        have = conn.columns("requests")
        optional = ", ".join(
            f"r.{name}" if name in have else f"NULL AS {name}" for name in OPTIONAL_COLUMNS
        )
        tags = "f.tags" if "tags" in conn.columns("feedback") else "NULL"
        where, params = _filters(since, until, model, served_by="served_by" in have)
        rows = query(
            conn,
            f"""
            WITH latest AS (
                SELECT request_id, rating, correction, {tags} AS tags,
                       ROW_NUMBER() OVER (
                           PARTITION BY request_id ORDER BY ts DESC, {conn.rowid} DESC
                       ) AS n
                FROM feedback f
            )
            SELECT r.id, r.ts, r.model, r.endpoint, r.prompt_text, r.response_text, {optional},
                   l.rating, l.correction, l.tags
            FROM requests r LEFT JOIN latest l ON l.request_id = r.id AND l.n = 1
            WHERE {where} ORDER BY r.ts
            """,
            params,
        )
    return [_row(r) for r in rows]


def _filters(
    since: float | None, until: float | None, model: str | None, *, served_by: bool
) -> tuple[str, list[Any]]:
    marks = ", ".join("?" for _ in GENERATION_ENDPOINTS)
    clauses = ["r.status = 200", f"r.endpoint IN ({marks})"]
    params: list[Any] = list(GENERATION_ENDPOINTS)
    if since is not None:
        clauses.append("r.ts >= ?")
        params.append(since)
    if until is not None:
        clauses.append("r.ts < ?")
        params.append(until)
    if model is not None and served_by:
        clauses.append("(r.model = ? OR r.served_by = ?)")
        params += [model, model]
    elif model is not None:
        clauses.append("r.model = ?")
        params.append(model)
    return " AND ".join(clauses), params


def _row(raw: dict[str, Any]) -> FeedbackRow:
    messages = raw.pop("prompt_messages")
    tags = raw.pop("tags")
    raw.pop("version", None)
    return FeedbackRow(
        **raw,
        prompt_messages=json.loads(messages) if messages else None,
        tags=list(json.loads(tags)) if tags else [],
    )
