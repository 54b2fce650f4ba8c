"""`load_records`: read files (or a LLaMA-Factory data folder), detect formats, normalise, find duplicates."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from slmkit.data.formats import AlpacaColumns, RowContext, ShareGPTTags, detect_format, normalise
from slmkit.data.readers import read_rows
from slmkit.data.records import (
    FILE_FIELD,
    FORMATS,
    DataLoadResult,
    Problem,
    Record,
    display_path,
)

FORMAT_CHOICES = ("auto", *FORMATS)
_KEYS_HINT = "messages | conversations | instruction+output | prompt+chosen+rejected | text"


def load_records(
    paths: list[str | Path] | str | Path,
    fmt: str = "auto",
    *,
    dataset_info: Path | None = None,
    names: list[str] | None = None,
    check_duplicates: bool = True,
) -> DataLoadResult:
    """Read and normalise every record of `paths`; problems are collected, never raised.

    A path may be a data file, a folder holding LLaMA-Factory's `dataset_info.json`, or that file
    itself (then `names` picks datasets; default: all with a local file). Call
    `result.raise_for_errors()` to stop on the first error.
    """
    if fmt not in FORMAT_CHOICES:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMAT_CHOICES}")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    result = DataLoadResult()
    if dataset_info is not None:
        from slmkit.data.dataset_info import load_dataset_info

        result.extend(load_dataset_info(Path(dataset_info), names))
    for raw in paths:
        path = Path(raw)
        info = path / "dataset_info.json" if path.is_dir() else path
        if info.name == "dataset_info.json" and info.is_file():
            from slmkit.data.dataset_info import load_dataset_info

            result.extend(load_dataset_info(info, names))
        elif path.is_dir():
            result.problems.append(
                Problem(
                    display_path(path),
                    1,
                    FILE_FIELD,
                    "folder has no dataset_info.json "
                    "(expected data files, or a LLaMA-Factory data folder)",
                )
            )
        else:
            result.extend(load_file(path, fmt))
    if check_duplicates:
        result.problems += find_duplicates(result)
    return result


def load_file(
    path: Path,
    fmt: str = "auto",
    *,
    shown: str | None = None,
    tags: ShareGPTTags | None = None,
    columns: AlpacaColumns | None = None,
    rename: dict[str, str] | None = None,
) -> DataLoadResult:
    """One file: rows -> records; the file's format is detected from its rows unless given.

    `rename` maps column names to the keys the format expects (LLaMA-Factory's `columns`).
    """
    shown = shown or display_path(path)
    read = read_rows(path, shown)
    if rename:
        for row in read.rows:
            row.data = {rename.get(k, k): v for k, v in row.data.items()}
    result = DataLoadResult(problems=list(read.problems))
    file_format = fmt if fmt != "auto" else _majority_format(read.rows)
    result.formats[shown] = file_format or "unknown"
    for row in read.rows:
        ctx = RowContext(shown, row.line)
        row_format = file_format
        if fmt == "auto":
            detected = detect_format(row.data)
            if detected is None:
                keys = ", ".join(sorted(row.data)) or "none"
                ctx.error("(record)", f"unknown format: keys {keys} (expected one of {_KEYS_HINT})")
                row_format = None
            elif detected != file_format:
                ctx.error(
                    "(record)",
                    f"looks like {detected} but this file is {file_format} (expected one "
                    "format per file; split the file or pass --format)",
                )
                row_format = None
        if row_format is not None:
            record = normalise(row.data, row_format, ctx, tags=tags, columns=columns)
            if record is not None:
                result.records.append(record)
        result.problems += ctx.problems
    result.counts[shown] = len(read.rows)
    return result


def _majority_format(rows: list) -> str | None:
    counts = Counter(f for f in (detect_format(r.data) for r in rows) if f is not None)
    if not counts:
        return None
    first_seen = {f: i for i, f in reversed(list(enumerate(detect_format(r.data) for r in rows)))}
    return max(counts, key=lambda f: (counts[f], -first_seen[f]))


def find_duplicates(result: DataLoadResult) -> list[Problem]:
    """Warnings for samples that repeat an earlier one exactly (everything that reaches the model:
    turns, system prompt, tools). They are kept; `data.dedupe` drops them."""
    first: dict[str, str] = {}
    problems: list[Problem] = []
    for record in result.records:
        original = first.setdefault(record.key(), record.source)
        if original != record.source:
            file, _, line = record.source.rpartition(":")
            problems.append(
                Problem(
                    file,
                    int(line),
                    "(record)",
                    f"duplicate of {original} (kept, so it weighs twice; "
                    "recipe option data.dedupe: true drops exact duplicates)",
                    "warning",
                )
            )
    return problems


def drop_duplicates(records: list[Record]) -> tuple[list[Record], list[Record]]:
    """(first copy of each sample, the later exact copies), in the original order."""
    seen: set[str] = set()
    kept: list[Record] = []
    dropped: list[Record] = []
    for record in records:
        key = record.key()
        (dropped if key in seen else kept).append(record)
        seen.add(key)
    return kept, dropped
