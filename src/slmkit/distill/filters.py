"""Which teacher answers are kept: the router's escalation checks (empty, refusal, repetition),
then length, truncation and the prompt's `must_include` facts. The first failed check names the
rejection reason."""

from __future__ import annotations

from slmkit.answer_checks import failed_check
from slmkit.distill.config import DistillSettings
from slmkit.serve.config import RepetitionGuard
from slmkit.serve.route_config import EscalationChecks

# every reason an answer can be rejected for, in the order they are checked (the counts table's rows)
REASONS = ("empty", "refusal", "repetition", "truncated", "too_long", "must_include")


def rejection(
    text: str,
    finish_reason: str | None,
    must_include: list[str],
    settings: DistillSettings,
) -> tuple[str, str] | None:
    """(reason, detail) for an answer the data must not hold, or None to keep it."""
    checks = EscalationChecks(empty=True, refusal=settings.refusal, repetition=settings.repetition)
    loop = RepetitionGuard()  # the gateway's default loop settings
    failed = failed_check(text, checks, ngram=loop.ngram, min_repeats=loop.min_repeats)
    if failed is not None:
        return failed, f"the answer failed the {failed} check"
    if finish_reason == "length" and not settings.keep_truncated:
        return "truncated", f"cut off at max_tokens ({settings.max_tokens})"
    limit = settings.max_answer_chars
    if limit is not None and len(text) > limit:
        return "too_long", f"{len(text)} characters (max_answer_chars {limit})"
    lowered = text.lower()
    missing = [fact for fact in must_include if fact.lower() not in lowered]
    if missing:
        return "must_include", "missing " + ", ".join(repr(m) for m in missing)
    return None
