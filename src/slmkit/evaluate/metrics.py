"""Answer metrics: fact recall with format-insensitive matching, exact match, ROUGE-L, bootstrap CIs.

Matching works on *canonical tokens* (`canonical_tokens`), so that these are equal:
- case, punctuation and whitespace: "Wren  Ground." == "wren ground"; "41-day" == "41 day";
- thousands separators and trailing decimal zeros: "1,200" == "1200", "$27.00" == "$27";
- number words up to the millions: "forty-one" == "41", "twelve hundred" == "1200";
- currency and percent symbols: "$6.75" == "6.75 dollars" == "6.75 USD", "15%" == "15 percent";
- a plural "s": "41 days" == "41-day" (every word of 4+ letters loses a final single "s").
A fact is present when its tokens occur contiguously in the answer's tokens.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

_THOUSANDS = re.compile(r"(?<=\d)[,_'\u2009\u202f](?=\d{3}(?!\d))")
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+|[$€£%]")  # letters of any script
_SYMBOLS = {
    "$": "dollar",
    "usd": "dollar",
    "€": "euro",
    "eur": "euro",
    "£": "pound",
    "gbp": "pound",
    "%": "percent",
}
_UNITS = {
    w: i
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
        ]
    )
}
_TENS = {
    w: 10 * i
    for i, w in enumerate(
        ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"], start=2
    )
}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}


def canonical_tokens(text: str) -> list[str]:
    """Lower-case word and number tokens with formats unified (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = (
        _THOUSANDS.sub("", text)
        .replace("a.m.", "am")
        .replace("p.m.", "pm")
        .replace("per cent", "percent")
    )
    raw = _TOKEN.findall(text)
    tokens = _words_to_numbers(raw)
    tokens = [_canonical_number(t) if t[0].isdigit() else _SYMBOLS.get(t, t) for t in tokens]
    tokens = [_singular(t) for t in tokens]
    return _unit_after_number(tokens)


def _canonical_number(token: str) -> str:
    if "." in token:
        token = token.rstrip("0").rstrip(".")
    return token.lstrip("0") or "0"


def _singular(token: str) -> str:
    if len(token) >= 4 and token.endswith("s") and not token.endswith("ss") and token.isalpha():
        return token[:-1]
    return token


def _unit_after_number(tokens: list[str]) -> list[str]:
    """ "dollar 6.75" -> "6.75 dollar" (a currency word before a number moves after it)."""
    out = list(tokens)
    for i in range(len(out) - 1):
        if out[i] in ("dollar", "euro", "pound") and out[i + 1][0].isdigit():
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def _words_to_numbers(tokens: list[str]) -> list[str]:
    """Runs of number words ("forty one", "two hundred and five") become one digit token."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        value, used = _parse_number_words(tokens, i)
        if used:
            out.append(str(value))
            i += used
        else:
            out.append(tokens[i])
            i += 1
    return out


def _parse_number_words(tokens: list[str], start: int) -> tuple[int, int]:
    total, current, i, seen = 0, 0, start, False
    while i < len(tokens):
        word = tokens[i]
        if word in _UNITS:
            current += _UNITS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word in _SCALES and seen:
            scale = _SCALES[word]
            if scale == 100:
                current *= 100
            else:
                total += current * scale
                current = 0
        elif (
            word == "and"
            and seen
            and i + 1 < len(tokens)
            and (tokens[i + 1] in _UNITS or tokens[i + 1] in _TENS)
        ):
            pass
        else:
            break
        seen = True
        i += 1
    return total + current, i - start


def canonical_text(text: str) -> str:
    return " ".join(canonical_tokens(text))


def contains_fact(answer: str | Sequence[str], fact: str) -> bool:
    """Whether `fact` occurs in `answer` (tokens contiguous, formats unified)."""
    haystack = canonical_tokens(answer) if isinstance(answer, str) else list(answer)
    needle = canonical_tokens(fact)
    if not needle:
        return True
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def fact_recall(answer: str, facts: Sequence[str]) -> float | None:
    """Share of `facts` present in the answer; None when there are no facts to check."""
    if not facts:
        return None
    tokens = canonical_tokens(answer)
    return sum(contains_fact(tokens, f) for f in facts) / len(facts)


def forbidden_hit(answer: str, forbidden: Sequence[str]) -> float | None:
    """1.0 when any `must_not_include` phrase is present, 0.0 when none is; None without any."""
    if not forbidden:
        return None
    tokens = canonical_tokens(answer)
    return float(any(contains_fact(tokens, f) for f in forbidden))


def json_valid(answer: str, response_format: dict[str, Any] | None) -> float | None:
    """1.0 when the answer (without its reasoning) is JSON meeting `response_format` (the
    gateway's json_schema check), 0.0 when not; None for an item that asks for no JSON."""
    if response_format is None:
        return None
    from slmkit.answer_checks import json_problem
    from slmkit.models.reasoning import split_reasoning

    return float(json_problem(split_reasoning(answer)[1].strip(), response_format) is None)


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the answer equals the reference after canonicalisation."""
    return float(canonical_tokens(answer) == canonical_tokens(reference))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, two rows)."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1 (beta 1) over canonical tokens: the one ROUGE-L of slmkit (eval and export).

    A text without any word or number token counts as empty: two empty texts agree (1.0, as
    `exact_match` says), an empty text against a non-empty one shares nothing (0.0).
    """
    cand, ref = canonical_tokens(answer), canonical_tokens(reference)
    if not cand and not ref:
        return 1.0
    lcs = lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def word_count(text: str) -> int:
    return len(text.split())


def bootstrap_ci(
    values: Sequence[float], *, samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(samples, data.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_bootstrap_ci(
    values: Sequence[float],
    baseline: Sequence[float],
    *,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Interval of mean(values - baseline) over the same items (resampled together)."""
    diffs = np.asarray(values, dtype=float) - np.asarray(baseline, dtype=float)
    return bootstrap_ci(diffs.tolist(), samples=samples, confidence=confidence, seed=seed)
