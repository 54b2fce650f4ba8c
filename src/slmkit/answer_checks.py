"""Checks on an answer's text: empty, a refusal, a loop, low confidence, JSON that does not
meet the request's schema, a forbidden phrase. The gateway escalates a chain member's answer that
fails one (`routes:` `escalate_when:`), and distillation rejects a teacher's answer that fails one.
Pure functions of the text, so any stage can use them."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Protocol

from slmkit.models.reasoning import split_reasoning


class Checks(Protocol):
    """Which checks are on (the fields of a route's `escalate_when:`)."""

    empty: bool
    refusal: list[str]
    repetition: bool
    min_mean_logprob: float | None
    json_schema: bool
    must_not_include: list[str]


def failed_check(
    text: str,
    checks: Checks,
    *,
    response_format: Any = None,
    tool_calls: bool = False,
    repeated: bool = False,
    logprobs: Sequence[float] = (),
    ngram: int,
    min_repeats: int,
) -> str | None:
    """The first check the answer fails (its name), or None. The answer is judged without its
    reasoning; `repeated`: a loop was already seen while it streamed; `logprobs`: its tokens'."""
    answer = split_reasoning(text)[1]
    lowered = answer.lower()
    if checks.empty and not answer.strip() and not tool_calls:
        return "empty"
    if any(phrase.lower() in lowered for phrase in checks.refusal):
        return "refusal"
    if checks.repetition and (repeated or find_repetition(answer, ngram, min_repeats) is not None):
        return "repetition"
    threshold = checks.min_mean_logprob
    if threshold is not None and logprobs and sum(logprobs) / len(logprobs) < threshold:
        return "low_logprob"
    if checks.json_schema and json_problem(answer, response_format):
        return "json_schema"
    if any(phrase.lower() in lowered for phrase in checks.must_not_include):
        return "must_not_include"
    return None


_WORD = re.compile(r"\w+|[^\w\s]")
MAX_UNIT_WORDS = 32


def find_repetition(text: str, min_unit: int = 4, min_repeats: int = 4) -> int | None:
    """Length in words of a unit repeated `min_repeats` times back to back at the end of `text`, or None."""
    words = _WORD.findall(text.lower())
    for unit in range(min_unit, MAX_UNIT_WORDS + 1):
        span = unit * min_repeats
        if span > len(words):
            return None
        tail = words[-span:]
        first = tail[:unit]
        if all(tail[i * unit : (i + 1) * unit] == first for i in range(1, min_repeats)):
            return unit
    return None


def json_problem(text: str, response_format: Any) -> str | None:
    """Why `text` does not meet a `response_format` of type json_object / json_schema, or None."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in ("json_object", "json_schema"):
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"not JSON ({exc})"
    if kind == "json_object":
        return None if isinstance(value, dict) else "not a JSON object"
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema_problem(value, schema) if isinstance(schema, dict) else None


def schema_problem(value: Any, schema: dict[str, Any]) -> str | None:
    """The first JSON-schema violation, or None."""
    import jsonschema_rs

    try:
        jsonschema_rs.validate(schema, value)
    except jsonschema_rs.ValidationError as exc:
        return str(exc).splitlines()[0]
    except ValueError:
        return None  # a schema the validator cannot read: the engine was given it as it is
    return None
