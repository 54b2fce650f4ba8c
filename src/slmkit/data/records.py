"""The one internal record every data format is normalised to, and the problems found on the way."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from slmkit.errors import DataError

RecordKind = Literal["sft", "preference", "unpaired", "text"]
Severity = Literal["error", "warning"]
FORMATS = ("alpaca", "sharegpt", "messages", "preference", "text")
FILE_FIELD = "(file)"


@dataclass
class Record:
    """One training example.

    `messages` are OpenAI-style dicts (role system|user|assistant|tool, content str, optional
    tool_calls/name/tool_call_id); `tools` are the function schemas the model is shown with them
    (OpenAI form, `{"type": "function", "function": {...}}`). A preference pair keeps the prompt
    turns plus the chosen reply in `messages` and the same prompt turns plus the rejected reply in
    `rejected`. An unpaired record (KTO's thumbs up/down) is a conversation whose last assistant
    reply was rated: `label` True for a good answer, False for a bad one. Plain text records have
    `text` and no messages.
    """

    messages: list[dict[str, Any]]
    source: str
    kind: RecordKind = "sft"
    rejected: list[dict[str, Any]] | None = None
    text: str | None = None
    tools: list[dict[str, Any]] | None = None
    label: bool | None = None

    @property
    def file(self) -> str:
        return self.source.rsplit(":", 1)[0]

    def prompt_messages(self) -> list[dict[str, Any]]:
        """The turns before the last assistant reply (the prompt of a preference pair)."""
        last = len(self.messages)
        while last > 0 and self.messages[last - 1].get("role") != "assistant":
            last -= 1
        return self.messages[: max(last - 1, 0)]

    def key(self) -> str:
        """A canonical string of everything that reaches the model; equal keys mean duplicate samples."""
        payload = {
            "m": self.messages,
            "r": self.rejected,
            "t": self.text,
            "tools": self.tools,
            "label": self.label,
        }
        return json.dumps(payload, sort_keys=True, ensure_ascii=False)


@dataclass
class Problem:
    """One thing wrong (or suspicious) in a data file, located to the line and the field."""

    file: str
    line: int
    field: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


@dataclass
class DataLoadResult:
    """Records read from one or more files, the problems found, and the format of each file."""

    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # records per file

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def raise_for_errors(self) -> None:
        """Raise DataError naming the first error (file:line: field: what) and how many more there are."""
        errors = self.errors
        if not errors:
            return
        more = (
            f" (and {len(errors) - 1} more error(s); run `slm data validate` to list them)"
            if len(errors) > 1
            else ""
        )
        raise DataError(f"{errors[0]}{more}")

    def extend(self, other: DataLoadResult) -> None:
        self.records += other.records
        self.problems += other.problems
        self.formats.update(other.formats)
        self.counts.update(other.counts)


def display_path(path: Path | str) -> str:
    """The path as the user will recognise it: relative to the working folder when inside it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)
