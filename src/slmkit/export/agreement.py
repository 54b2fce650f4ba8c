"""Eval prompts and answer agreement: is an answer exact, similar or different from a reference answer?

"similar" = not identical after whitespace/case normalisation, but ROUGE-L F1 with the reference
at least `similar_rouge_l` (see `Thresholds`). ROUGE-L is `evaluate.metrics.rouge_l`, the one
`slm eval` reports (longest common subsequence of canonical word tokens). It is used rather than
embeddings so the check needs no extra model and is exact to reproduce; a quantized answer that
keeps the same words in the same order scores high.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Literal

from slmkit.data.readers import json_objects
from slmkit.evaluate.evalset import EvalItem, load_eval_set
from slmkit.evaluate.metrics import rouge_l
from slmkit.export.errors import ExportError

Agreement = Literal["exact", "similar", "different"]
Messages = list[dict[str, str]]

BUILTIN_PROMPTS = (
    "What is the capital of France?",
    "Give me three tips for writing a clear email.",
    "Explain what a large language model is in two sentences.",
    "How many days are there in a leap year?",
    "Write a short, polite reply to a customer whose parcel is late.",
    "What is the boiling point of water at sea level in Celsius?",
    "List the primary colours.",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish.",
    "What does a CPU do in a computer?",
    "Summarise the benefits of regular exercise in one sentence.",
    "What is 12 multiplied by 7?",
)


def load_prompt_set(path: Path | None, limit: int) -> tuple[list[Messages], list[EvalItem] | None]:
    """Eval prompts, and the eval set they come from when the file is one (records with a
    `reference`, read as `slm eval` reads them, so the task metric can score the answers)."""
    if path is not None and _is_eval_set(path):
        items = load_eval_set(path)[:limit]
        return [item.messages for item in items], items
    return load_prompts(path, limit), None


def _is_eval_set(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open(encoding="utf-8") as lines:
        first = next((line for line in lines if line.strip()), "")
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and "reference" in record


def load_prompts(path: Path | None, limit: int) -> list[Messages]:
    """Eval prompts as message lists: from a JSONL file (`prompt` or `messages` per line) or built in."""
    if path is None:
        return [[{"role": "user", "content": p}] for p in BUILTIN_PROMPTS[:limit]]
    if not path.is_file():
        raise ExportError(
            f"prompts file {path} not found",
            hint="give a JSONL file with a `prompt` or `messages` field per line",
        )
    prompts: list[Messages] = []
    for lineno, record in json_objects(path, path.read_text(encoding="utf-8"), ExportError):
        prompts.append(_record_messages(record, f"{path}:{lineno}"))
        if len(prompts) >= limit:
            break
    if not prompts:
        raise ExportError(f"{path}: no prompts in the file")
    return prompts


def _record_messages(record: object, where: str) -> Messages:
    if isinstance(record, dict) and isinstance(record.get("prompt"), str):
        return [{"role": "user", "content": record["prompt"]}]
    if isinstance(record, dict) and isinstance(record.get("messages"), list):
        messages = [
            {"role": str(m["role"]), "content": str(m["content"])} for m in record["messages"]
        ]
        while (
            messages and messages[-1]["role"] == "assistant"
        ):  # the prompt is everything before the answer
            messages.pop()
        if messages:
            return messages
    raise ExportError(f"{where}: expected a `prompt` string or a `messages` list")


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def classify(candidate: str, reference: str, similar_threshold: float) -> Agreement:
    if normalise(candidate) == normalise(reference):
        return "exact"
    return "similar" if rouge_l(candidate, reference) >= similar_threshold else "different"


def agreement_rates(
    candidates: list[str], references: list[str], similar_threshold: float
) -> dict[str, float]:
    """Shares of exact / similar / different answers (they sum to 1)."""
    labels = [
        classify(c, r, similar_threshold) for c, r in zip(candidates, references, strict=True)
    ]
    counts = Counter(labels)
    total = max(len(labels), 1)
    return {name: counts.get(name, 0) / total for name in ("exact", "similar", "different")}
