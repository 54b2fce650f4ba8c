"""Read JSONL, JSON arrays, CSV/TSV and Parquet into raw rows, each with the line it starts on.

Files must be UTF-8 (a UTF-8 byte-order mark is tolerated); anything else is reported with the
line of the first bad byte. Parquet rows are numbered from 1 (the "line" of a row).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.data.records import FILE_FIELD, Problem
from slmkit.errors import SlmError

FILE_KINDS = ("jsonl", "json", "csv", "tsv", "parquet")
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_JSON_IN_CELL = (
    "messages",
    "conversations",
    "history",
    "chosen",
    "rejected",
    "prompt",
    "tools",
    "tool_calls",
)


@dataclass
class RawRow:
    line: int
    data: dict[str, Any]


@dataclass
class ReadResult:
    rows: list[RawRow]
    problems: list[Problem]
    file_kind: str


def read_rows(path: Path, shown: str) -> ReadResult:
    """All rows of one file; unreadable parts become problems located at `shown:line`."""
    if not path.is_file():
        return ReadResult(
            [],
            [
                Problem(
                    shown,
                    1,
                    FILE_FIELD,
                    "file not found (expected a data file or a folder with dataset_info.json)",
                )
            ],
            "?",
        )
    raw = path.read_bytes()
    kind = _EXTENSIONS.get(path.suffix.lower())
    if kind == "parquet" or raw[:4] == b"PAR1":
        return _read_parquet(path, shown)
    text, problem = decode_utf8(raw, shown)
    if problem is not None:
        return ReadResult([], [problem], kind or "?")
    if not text.strip():
        return ReadResult(
            [],
            [Problem(shown, 1, FILE_FIELD, "file is empty (expected at least one record)")],
            kind or "?",
        )
    if kind is None:
        kind = (
            "json"
            if text.lstrip().startswith("[")
            else "jsonl"
            if text.lstrip().startswith("{")
            else None
        )
    if kind is None:
        return ReadResult(
            [],
            [
                Problem(
                    shown,
                    1,
                    FILE_FIELD,
                    f"unknown file type {path.suffix!r} (expected "
                    ".jsonl, .json, .csv, .tsv or .parquet)",
                )
            ],
            "?",
        )
    if kind == "json" and not text.lstrip().startswith("["):
        if _is_one_json_object(text) and "\n" in text.strip():
            problem = Problem(
                shown,
                1,
                FILE_FIELD,
                "the file holds one JSON object (expected an "
                "array of records [{...}, {...}] or one object per line)",
            )
            return ReadResult([], [problem], "json")
        kind = (
            "jsonl"  # a .json file holding one object per line, as LLaMA-Factory users often have
        )
    if kind == "json":
        return _read_json_array(text, shown)
    if kind in ("csv", "tsv"):
        return _read_csv(text, shown, "\t" if kind == "tsv" else ",", kind)
    return _read_jsonl(text, shown)


def decode_utf8(raw: bytes, shown: str) -> tuple[str, Problem | None]:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "", Problem(
            shown, 1, FILE_FIELD, "file is UTF-16 text (expected UTF-8; re-save it as UTF-8)"
        )
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        byte = raw[exc.start : exc.start + 1].hex()
        return "", Problem(
            shown,
            line,
            FILE_FIELD,
            f"not UTF-8 text: byte 0x{byte} at offset {exc.start} "
            "(expected UTF-8; re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`)",
        )


def json_objects(
    path: Path, text: str, error: type[SlmError]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSONL file that a command reads whole
    (eval sets, prompt files, question sets): the first bad line raises `error` naming file:line."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{number}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
        if not isinstance(value, dict):
            raise error(f"{path}:{number}: expected a JSON object, got {json_type(value)}")
        yield number, value


def _read_jsonl(text: str, shown: str) -> ReadResult:
    rows: list[RawRow] = []
    problems: list[Problem] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(
                Problem(
                    shown,
                    number,
                    "(json)",
                    f"invalid JSON: {exc.msg} at column {exc.colno} "
                    "(expected one JSON object per line)",
                )
            )
            continue
        _append_object(rows, problems, value, number, shown)
    return ReadResult(rows, problems, "jsonl")


def _append_object(
    rows: list[RawRow], problems: list[Problem], value: Any, line: int, shown: str
) -> None:
    if isinstance(value, dict):
        rows.append(RawRow(line, value))
    else:
        problems.append(
            Problem(
                shown,
                line,
                "(record)",
                f"a record must be a JSON object, got "
                f'{json_type(value)} (expected {{"field": ...}})',
            )
        )


def _read_json_array(text: str, shown: str) -> ReadResult:
    """Walk the array element by element so every record knows the line it starts on."""
    decoder = json.JSONDecoder()
    rows: list[RawRow] = []
    problems: list[Problem] = []
    pos = text.index("[") + 1
    while True:
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == "]":
            break
        line = text.count("\n", 0, pos) + 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            problems.append(
                Problem(
                    shown,
                    exc.lineno,
                    "(json)",
                    f"invalid JSON: {exc.msg} at column {exc.colno} "
                    "(expected an array of JSON objects)",
                )
            )
            return ReadResult(rows, problems, "json")
        _append_object(rows, problems, value, line, shown)
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            break
        line = text.count("\n", 0, pos) + 1
        problems.append(
            Problem(
                shown,
                line,
                "(json)",
                "invalid JSON: expected ',' or ']' after a record "
                "(expected an array of JSON objects)",
            )
        )
        return ReadResult(rows, problems, "json")
    if not rows and not problems:
        problems.append(
            Problem(
                shown, 1, FILE_FIELD, "file holds an empty array (expected at least one record)"
            )
        )
    return ReadResult(rows, problems, "json")


def _is_one_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_csv(text: str, shown: str, delimiter: str, kind: str) -> ReadResult:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[RawRow] = []
    problems: list[Problem] = []
    start = 2
    try:
        for row in reader:
            if None in row:
                problems.append(
                    Problem(
                        shown,
                        start,
                        "(row)",
                        f"{len(row[None]) + len(reader.fieldnames or [])} "
                        f"cells but {len(reader.fieldnames or [])} columns in the header "
                        "(expected one cell per header column; quote cells with commas)",
                    )
                )
            else:
                data = {
                    k: _cell(v) if k in _JSON_IN_CELL else v
                    for k, v in row.items()
                    if k is not None and v not in (None, "")
                }
                rows.append(RawRow(start, data))
            start = reader.line_num + 1
    except csv.Error as exc:
        problems.append(Problem(shown, reader.line_num, "(csv)", f"invalid CSV: {exc}"))
    if not rows and not problems:
        problems.append(
            Problem(
                shown, 1, FILE_FIELD, "file has a header but no rows (expected at least one record)"
            )
        )
    return ReadResult(rows, problems, kind)


def _cell(value: str) -> Any:
    """CSV cells holding JSON lists/objects (messages, conversations, history) are parsed."""
    stripped = value.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return value
    return value


def _read_parquet(path: Path, shown: str) -> ReadResult:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        return ReadResult(
            [],
            [
                Problem(
                    shown,
                    1,
                    FILE_FIELD,
                    f"unreadable Parquet file: {exc} (expected a valid .parquet file)",
                )
            ],
            "parquet",
        )
    if table.num_rows == 0:
        return ReadResult(
            [],
            [
                Problem(
                    shown, 1, FILE_FIELD, "Parquet file has no rows (expected at least one record)"
                )
            ],
            "parquet",
        )
    rows = [
        RawRow(i, {k: v for k, v in row.items() if v is not None})
        for i, row in enumerate(table.to_pylist(), start=1)
    ]
    return ReadResult(rows, [], "parquet")


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type (for messages users recognise)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
