"""Leakage between evaluation and training data: the same prompt (exact, after normalising case and
spaces) or a near-duplicate (word 3-gram Jaccard similarity >= threshold)."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.data.readers import read_rows
from slmkit.data.records import Problem, Record, display_path

NEAR_DUPLICATE_THRESHOLD = 0.8
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class EvalPrompt:
    prompt: str
    source: str


def record_prompt(record: Record) -> str:
    """The last user turn before the final reply (the question the model answers), or the text."""
    if record.kind == "text":
        return record.text or ""
    users = [m["content"] for m in record.prompt_messages() if m["role"] == "user"]
    return users[-1] if users else ""


def normalise_prompt(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _shingles(text: str) -> set[str]:
    words = normalise_prompt(text).split()
    if len(words) < 3:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + 3]) for i in range(len(words) - 2)}


def eval_prompts(path: Path) -> tuple[list[EvalPrompt], list[Problem]]:
    """Prompts of an eval/test file in any of our formats or the eval-set shape ({"prompt": ...} or messages)."""
    shown = display_path(path)
    read = read_rows(path, shown)
    prompts = []
    for row in read.rows:
        text = _row_prompt(row.data)
        if text:
            prompts.append(EvalPrompt(text, f"{shown}:{row.line}"))
    return prompts, list(read.problems)


def _row_prompt(data: dict[str, Any]) -> str | None:
    for key in ("prompt", "question", "instruction"):
        value = data.get(key)
        if isinstance(value, str):
            extra = data.get("input") if key == "instruction" else None
            return value + ("\n" + extra if isinstance(extra, str) and extra.strip() else "")
        if isinstance(value, list):
            return _last_user(value, "role", "content", ("user",))
    for key, role, content, users in (
        ("messages", "role", "content", ("user",)),
        ("conversations", "from", "value", ("human", "user")),
    ):
        if isinstance(data.get(key), list):
            return _last_user(data[key], role, content, users)
    return None


def _last_user(turns: list[Any], role: str, content: str, users: tuple[str, ...]) -> str | None:
    texts = [t.get(content) for t in turns if isinstance(t, dict) and t.get(role) in users]
    texts = [t for t in texts if isinstance(t, str)]
    return texts[-1] if texts else None


def user_turns(record: Record) -> list[str]:
    """Every user turn of a record (each can leak into an eval question), or its text."""
    if record.kind == "text":
        return [record.text or ""]
    return [m["content"] for m in record.messages if m["role"] == "user"]


def find_leakage(
    train: list[Record], evals: list[EvalPrompt], threshold: float = NEAR_DUPLICATE_THRESHOLD
) -> list[Problem]:
    """One problem per eval prompt that appears in training (error when exact, warning when near)."""
    exact: dict[str, str] = {}
    index: dict[str, set[int]] = defaultdict(set)
    turns: list[tuple[str, set[str]]] = []  # (source, shingles) of every training user turn
    for record in train:
        for prompt in user_turns(record):
            exact.setdefault(normalise_prompt(prompt), record.source)
            shingles = _shingles(prompt)
            for s in shingles:
                index[s].add(len(turns))
            turns.append((record.source, shingles))
    problems = []
    for item in evals:
        file, _, line = item.source.rpartition(":")
        key = normalise_prompt(item.prompt)
        if key and key in exact:
            problems.append(
                Problem(
                    file,
                    int(line),
                    "prompt",
                    "leakage: the same prompt is in the training "
                    f"data at {exact[key]} (expected eval prompts unseen in training)",
                )
            )
            continue
        match = _nearest(_shingles(item.prompt), index, [t[1] for t in turns])
        if match is not None and match[1] >= threshold:
            problems.append(
                Problem(
                    file,
                    int(line),
                    "prompt",
                    f"leakage: near-duplicate ({match[1]:.0%} "
                    f"similar) of the training prompt at {turns[match[0]][0]}",
                    "warning",
                )
            )
    return problems


def _nearest(
    shingles: set[str], index: dict[str, set[int]], sets: list[set[str]]
) -> tuple[int, float] | None:
    shared: dict[int, int] = defaultdict(int)
    for s in shingles:
        for i in index.get(s, ()):
            shared[i] += 1
    best: tuple[int, float] | None = None
    for i, n in shared.items():
        score = n / len(shingles | sets[i])
        if best is None or score > best[1]:
            best = (i, score)
    return best
