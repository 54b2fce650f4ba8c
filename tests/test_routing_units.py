"""The router's pieces without a server: each escalation check on a constructed answer, the JSON
checks, the rule conditions, the route statistics of an audit log, and the local share `slm cost`
measures from it (the end-to-end story is tests/test_serve_routes.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from slmkit.answer_checks import json_problem
from slmkit.cost import CostConfig, estimate_cost
from slmkit.errors import SlmError
from slmkit.serve import api_errors
from slmkit.serve.api_errors import ApiError
from slmkit.serve.audit import AuditLog, AuditRecord
from slmkit.serve.config import AuditSettings, RepetitionGuard
from slmkit.serve.engines.request import GenerationRequest
from slmkit.serve.generation import Outcome
from slmkit.serve.logs import parse_window, route_stats
from slmkit.serve.route_config import EscalationChecks, Route, RouteRule
from slmkit.serve.routing import (
    RequestFacts,
    RoutePlan,
    failed_check,
    rule_matches,
)

ALL_CHECKS = EscalationChecks(
    empty=True,
    refusal=["I can't help"],
    repetition=True,
    min_mean_logprob=-2.5,
    json_schema=True,
    must_not_include=["as an AI"],
)
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "a",
        "schema": {
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "required": ["n"],
        },
    },
}


def gen(response_format: dict[str, Any] | None = None) -> GenerationRequest:
    passthrough = {"response_format": response_format} if response_format else {}
    return GenerationRequest("m", [], None, 16, False, passthrough=passthrough)


def check(text: str, logprobs: list[float] | None = None, **kw: Any) -> str | None:
    outcome = Outcome([text], "stop", extra=kw.pop("extra", {}))
    guard = RepetitionGuard(ngram=1, min_repeats=4)
    return failed_check(outcome, ALL_CHECKS, gen(kw.pop("fmt", None)), guard, logprobs or [])


@pytest.mark.parametrize(
    ("text", "logprobs", "more", "reason"),
    [
        ("  \n", None, {}, "empty"),
        ("Sorry, I CAN'T HELP with that.", None, {}, "refusal"),
        ("go go go go", None, {}, "repetition"),
        ("A fine answer.", [-3.0, -2.5, -2.6], {}, "low_logprob"),
        ('{"n": "three"}', None, {"fmt": SCHEMA}, "json_schema"),
        ("{not json", None, {"fmt": {"type": "json_object"}}, "json_schema"),
        ("As an AI, I think so.", None, {}, "must_not_include"),
        ("A fine answer.", [-0.1, -2.0], {}, None),
        ('{"n": 3}', None, {"fmt": SCHEMA}, None),
        ("", None, {"extra": {"tool_calls": [{"id": "1"}]}}, None),  # a tool call is an answer
        ("{not json", None, {"fmt": {"type": "text"}}, None),
        ("No logprobs given.", None, {}, None),
    ],
    ids=[
        "empty",
        "refusal",
        "repetition",
        "low-logprob",
        "schema",
        "json-object",
        "must-not-include",
        "confident",
        "schema-met",
        "tool-call",
        "text-format",
        "no-logprobs",
    ],
)
def test_each_check_on_a_constructed_answer(
    text: str, logprobs: list[float] | None, more: dict[str, Any], reason: str | None
) -> None:
    assert check(text, logprobs, **more) == reason


def test_checks_that_are_off_never_fire() -> None:
    outcome = Outcome(["I can't help. as an AI go go go go"], "stop")
    assert failed_check(outcome, EscalationChecks(), gen(), RepetitionGuard(), [-9.0]) is None
    assert not EscalationChecks().active and ALL_CHECKS.active


def test_json_problem_names_what_is_wrong() -> None:
    assert json_problem('{"n": 1}', SCHEMA) is None
    assert "required" in (json_problem("{}", SCHEMA) or "")
    assert json_problem("[1]", {"type": "json_object"}) == "not a JSON object"
    assert json_problem("anything", None) is None


def facts(**kw: Any) -> RequestFacts:
    async def count() -> int:
        return kw.get("tokens", 10)

    return RequestFacts(
        text=kw.get("text", "hello"),
        metadata=kw.get("metadata", {}),
        user=kw.get("user"),
        headers=kw.get("headers", {}),
        count_tokens=count,
    )


@pytest.mark.parametrize(
    ("rule", "request_facts", "matches"),
    [
        ({"prompt_tokens_over": 700}, {"tokens": 701}, True),
        ({"prompt_tokens_over": 700}, {"tokens": 700}, False),
        ({"pattern": "(?i)lawyer|refund"}, {"text": "my LAWYER says"}, True),
        ({"pattern": "(?i)lawyer|refund"}, {"text": "hello"}, False),
        ({"metadata": {"tier": "gold"}}, {"metadata": {"tier": "gold", "x": "1"}}, True),
        ({"metadata": {"tier": "gold"}}, {"metadata": {"tier": "silver"}}, False),
        ({"user": "^vip-"}, {"user": "vip-7"}, True),
        ({"user": "^vip-"}, {}, False),
        ({"header": {"X-Route": "big"}}, {"headers": {"x-route": "big"}}, True),
        # every condition given must hold
        ({"pattern": "refund", "metadata": {"tier": "gold"}}, {"text": "refund"}, False),
    ],
)
def test_rule_conditions(
    rule: dict[str, Any], request_facts: dict[str, Any], matches: bool
) -> None:
    parsed = RouteRule(name="r", to="big", **rule)
    assert asyncio.run(rule_matches(parsed, facts(**request_facts))) is matches


def test_parse_window() -> None:
    assert [parse_window(t) for t in ("300", "90s", "5m", "1h", "7d")] == [
        300,
        90,
        300,
        3600,
        604_800,
    ]
    for bad in ("", "h", "-1m", "1w", "inf"):
        with pytest.raises(SlmError, match="--window"):
            parse_window(bad)


def write_routed_rows(db: Path, rows: list[tuple[str | None, str | None, str | None, int]]) -> None:
    log = AuditLog(AuditSettings(path=db))
    now = time.time()
    for i, (route, reason, served_by, status) in enumerate(rows):
        log.record(
            AuditRecord(
                id=f"r{i}", ts=now - i, key_id=None, model=route or "small", endpoint="chat",
                status=status, prompt_tokens=100, completion_tokens=50, latency_s=0.5,
                route=route, route_reason=reason, served_by=served_by or "small",
            )
        )  # fmt: skip
    log.flush()
    log.close()


ROWS = [
    ("support", "default", "small", 200),
    ("support", "default", "small", 200),
    ("support", "rule:legal", "big", 200),
    ("support", "rule:short", "small", 200),  # a rule that keeps it on the first member
    ("support", "escalated:refusal", "big", 200),
    ("support", "fallback:error", "big", 200),
    ("support", "default", "small", 503),  # failed: not answered
    ("faq", "default", "small", 200),
    ("faq", "escalated:low_logprob", "big", 200),
    ("only-escalated", "escalated:empty", "big", 200),  # first member unknown from the log
    (None, None, None, 200),  # not routed
]


def test_route_stats_over_an_audit_log(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    write_routed_rows(db, ROWS)
    stats = {s.route: s for s in route_stats(db, 3600)}
    assert set(stats) == {"support", "faq", "only-escalated"}
    support = stats["support"]
    assert (support.requests, support.answered, support.local) == (7, 6, 3)
    assert support.first_member == "small" and support.local_share == pytest.approx(0.5)
    assert support.count("rule:") == {"legal": 1, "short": 1}
    assert support.count("escalated:") == {"refusal": 1}
    assert stats["faq"].local_share == pytest.approx(0.5)
    assert stats["only-escalated"].local_share is None
    # the serve config's chains name the first member where the log cannot
    known = {s.route: s for s in route_stats(db, 3600, chains={"only-escalated": ["small"]})}
    assert known["only-escalated"].local_share == 0.0


def test_cost_takes_the_local_share_from_the_routes(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    write_routed_rows(db, ROWS)
    entered = {"tokens_per_s": 100.0, "machine_concurrency": 4, "machine_price": 1.0}
    prices = {"input_price": 1.0, "output_price": 4.0}
    result = estimate_cost(CostConfig(**entered, **prices, audit_db=db, window_days=1))
    # support 3 of 6 answered locally, faq 1 of 2; only-escalated has no known first member
    assert result.model.local_share == pytest.approx(4 / 8)
    assert result.audit is not None and (result.audit.routed, result.audit.routed_local) == (8, 4)
    assert result.notes[0].startswith("local share measured: 4 of 8")
    given = estimate_cost(
        CostConfig(**entered, **prices, audit_db=db, window_days=1, local_share=0.9)
    )
    assert given.model.local_share == 0.9 and given.notes[0] == "local share given (--local-share)"
    plain = tmp_path / "plain.db"
    write_routed_rows(plain, [(None, None, None, 200)])
    assumed = estimate_cost(CostConfig(**entered, **prices, audit_db=plain, window_days=1))
    assert assumed.model.local_share == 0.8
    assert "no routed request" in assumed.notes[0]


@pytest.mark.parametrize(
    ("error", "fallback_on_error", "reason"),
    [
        (api_errors.context_length_exceeded(900, 768), True, "fallback:context"),
        (api_errors.context_length_exceeded(900, 768), False, "fallback:context"),
        (ApiError(503, "down", code="engine_unavailable"), True, "fallback:error"),
        (ApiError(429, "full", code="queue_full"), True, "fallback:error"),
        (ApiError(503, "down", code="engine_unavailable"), False, None),
        (ApiError(400, "bad", code="invalid_value"), True, None),
        (ApiError(408, "slow", code="timeout"), True, None),
    ],
)
def test_which_member_errors_move_down_the_chain(
    error: ApiError, fallback_on_error: bool, reason: str | None
) -> None:
    route = Route(id="support", chain=["small", "big"], fallback_on_error=fallback_on_error)
    plan = RoutePlan(route, list(route.chain), "default")
    assert plan.pass_on_reason(error) == reason
    plan.move_on("escalated:refusal")
    assert plan.target == "big" and plan.pass_on_reason(error) is None  # the last member is final
