"""LLaMA-Factory's `dataset_info.json`, read as is: `file_name`, `formatting`, `ranking`, `columns`, `tags`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slmkit.data.formats import AlpacaColumns, ShareGPTTags
from slmkit.data.records import FILE_FIELD, DataLoadResult, Problem, display_path

_DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet")


def load_dataset_info(info_path: Path, names: list[str] | None) -> DataLoadResult:
    """Load the datasets named in `names` (default: every entry with a local file) from a data folder."""
    from slmkit.data.loader import load_file

    shown = display_path(info_path)
    result = DataLoadResult()
    text, entries = _read_info(info_path, shown, result)
    if entries is None:
        return result
    wanted = names or [n for n, e in entries.items() if isinstance(e, dict) and "file_name" in e]
    for name in wanted:
        line = _line_of(text, f'"{name}"')
        entry = entries.get(name)
        if not isinstance(entry, dict):
            known = ", ".join(sorted(entries)) or "none"
            result.problems.append(
                Problem(
                    shown, line, "(dataset)", f"unknown dataset {name!r} (expected one of {known})"
                )
            )
            continue
        spec = _dataset_spec(entry, name, shown, line, result)
        if spec is None:
            continue
        fmt, tags, columns, rename = spec
        for file in _data_files(info_path.parent / entry["file_name"]):
            result.extend(load_file(file, fmt, tags=tags, columns=columns, rename=rename))
    return result


def _read_info(
    info_path: Path, shown: str, result: DataLoadResult
) -> tuple[str, dict[str, Any] | None]:
    try:
        text = info_path.read_text(encoding="utf-8-sig")
        entries = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        line = getattr(exc, "lineno", 1)
        result.problems.append(
            Problem(
                shown,
                line,
                FILE_FIELD,
                f"unreadable dataset_info.json: {exc} (expected a UTF-8 JSON object of datasets)",
            )
        )
        return "", None
    if not isinstance(entries, dict):
        result.problems.append(
            Problem(
                shown,
                1,
                FILE_FIELD,
                "expected a JSON object mapping dataset names to their description",
            )
        )
        return text, None
    return text, entries


def _dataset_spec(
    entry: dict[str, Any], name: str, shown: str, line: int, result: DataLoadResult
) -> tuple[str, ShareGPTTags | None, AlpacaColumns | None, dict[str, str]] | None:
    """(format, sharegpt tags, alpaca columns, column renames) of one dataset entry."""
    if "file_name" not in entry:
        hub = next(
            (
                k
                for k in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
                if k in entry
            ),
            "file_name",
        )
        result.problems.append(
            Problem(
                shown,
                line,
                f"{name}.file_name",
                f"missing ({hub} datasets are not read; "
                "expected file_name of a local file or folder)",
            )
        )
        return None
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt", "openai"):
        result.problems.append(
            Problem(
                shown,
                line,
                f"{name}.formatting",
                f"unknown formatting {formatting!r} (expected alpaca or sharegpt)",
            )
        )
        return None
    columns = entry.get("columns") or {}
    ranking = bool(entry.get("ranking", False))
    renamed = ("chosen", "rejected", "tools") if ranking else ("tools",)
    rename = {columns[k]: k for k in renamed if columns.get(k, k) != k}
    if columns.get("kto_tag"):  # unpaired ratings (KTO): the column holding true/false
        rename[columns["kto_tag"]] = "label"
    if formatting == "alpaca":
        cols = AlpacaColumns(
            instruction=columns.get("prompt", "instruction"),
            input=columns.get("query", "input"),
            output=columns.get("response", "output"),
            system=columns.get("system", "system"),
            history=columns.get("history", "history"),
        )
        if (
            not ranking
            and "prompt" in columns
            and "response" not in columns
            and "query" not in columns
        ):
            return (
                "text",
                None,
                None,
                {columns["prompt"]: "text"},
            )  # pretraining: {"prompt": "text"}
        return ("preference" if ranking else "alpaca"), None, cols, rename
    tags = _sharegpt_tags(entry.get("tags") or {}, columns, formatting)
    return ("preference" if ranking else "sharegpt"), tags, None, rename


def _sharegpt_tags(tags: dict[str, str], columns: dict[str, str], formatting: str) -> ShareGPTTags:
    openai = formatting == "openai"
    base = ShareGPTTags(
        messages_key=columns.get("messages", "messages" if openai else "conversations"),
        role_tag=tags.get("role_tag", "role" if openai else "from"),
        content_tag=tags.get("content_tag", "content" if openai else "value"),
        system_key=columns.get("system", "system"),
    )
    for role, key in (
        ("user", "user_tag"),
        ("assistant", "assistant_tag"),
        ("system", "system_tag"),
        ("function", "function_tag"),
        ("observation", "observation_tag"),
    ):
        if key in tags:
            setattr(base, role, (tags[key],))
    return base


def _data_files(target: Path) -> list[Path]:
    if target.is_dir():
        return sorted(p for p in target.iterdir() if p.suffix.lower() in _DATA_SUFFIXES)
    return [target]


def _line_of(text: str, needle: str) -> int:
    index = text.find(needle)
    return text.count("\n", 0, index) + 1 if index >= 0 else 1
