"""Optional LLM-as-judge: for each item, a judge model picks the better of two answers.

Pairwise against the first model, with a fixed rubric, or by a reward model (`reward:RUN`,
`RewardJudge`): the answer it scores higher wins. The two answers swap places on every
other item to cancel the judge's position bias. Score per item: 1 win, 0.5 tie, 0 loss; a
reply the judge garbles counts as a tie. Any OpenAI-compatible endpoint works (`slm serve` too).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from slmkit.config import env_secret
from slmkit.errors import SlmError
from slmkit.evaluate.config import JudgeSettings
from slmkit.evaluate.evalset import EvalItem

RUBRIC = """You are grading two answers of a customer-support assistant to the same question.
Judge, in this order of importance:
1. Correctness: agrees with the reference answer and states its key facts; invents nothing.
2. Completeness: answers what was asked.
3. Clarity: short, polite, on topic.
Reply with exactly one of: A, B, TIE."""

_VERDICT = re.compile(r"\b(TIE|A|B)\b")


def judge_prompt(item: EvalItem, first: str, second: str) -> list[dict[str, str]]:
    user = (
        f"Question: {item.question}\n\nReference answer: {item.reference}\n\n"
        f"Answer A: {first}\n\nAnswer B: {second}\n\nWhich answer is better? Reply A, B or TIE."
    )
    return [{"role": "system", "content": RUBRIC}, {"role": "user", "content": user}]


def parse_verdict(reply: str) -> str:
    """'A', 'B' or 'TIE' (the first one named); anything else counts as 'TIE'."""
    match = _VERDICT.search(reply.upper())
    return match.group(1) if match else "TIE"


def pairwise_scores(
    settings: JudgeSettings,
    items: Sequence[EvalItem],
    baseline: Sequence[str],
    candidate: Sequence[str],
) -> list[float]:
    """Per item: 1.0 when the candidate wins over the baseline, 0.5 tie, 0.0 loss."""
    try:
        from openai import OpenAI, OpenAIError
    except ImportError as exc:
        raise SlmError(
            "the LLM judge needs the `openai` package", hint="pip install openai"
        ) from exc

    client = OpenAI(
        base_url=settings.base_url,
        # a judge endpoint without auth takes any key; the client needs a string to send
        api_key=env_secret(settings.api_key_env, "judge.api_key_env", required=False) or "no-key",
        timeout=settings.timeout_s,
        max_retries=1,
    )
    scores = []
    for i, (item, base, cand) in enumerate(zip(items, baseline, candidate, strict=True)):
        swapped = i % 2 == 1
        first, second = (cand, base) if swapped else (base, cand)
        try:
            reply = client.chat.completions.create(
                model=settings.model,
                messages=judge_prompt(item, first, second),  # type: ignore[arg-type]
                temperature=0,
                max_tokens=settings.max_tokens,
            )
        except OpenAIError as exc:
            raise SlmError(
                f"judge at {settings.base_url} failed: {type(exc).__name__}: {exc}"
            ) from exc
        verdict = parse_verdict(reply.choices[0].message.content or "")
        candidate_slot = "A" if swapped else "B"
        scores.append(0.5 if verdict == "TIE" else float(verdict == candidate_slot))
    return scores


class RewardJudge:
    """A reward model as the judge: per item 1.0 when the candidate's answer gets the higher
    reward, 0.5 for equal rewards, 0.0 otherwise (no position bias to cancel)."""

    def __init__(self, ref: str) -> None:
        from slmkit.models.reward import RewardModel

        self.model = RewardModel.load(ref)
        self._baseline: dict[int, list[float]] = {}

    def pairwise_scores(
        self, items: Sequence[EvalItem], baseline: Sequence[str], candidate: Sequence[str]
    ) -> list[float]:
        conversations = [item.messages for item in items]
        key = hash(tuple(baseline))
        if key not in self._baseline:
            self._baseline[key] = self.model.score(conversations, list(baseline))
        base = self._baseline[key]
        mine = self.model.score(conversations, list(candidate))
        return [
            1.0 if m > b + 1e-6 else 0.0 if m < b - 1e-6 else 0.5
            for m, b in zip(mine, base, strict=True)
        ]
