"""Routes on a real `slm serve`: `local` (the embedded model in llama-server) answers first and
`fallback` (a random-init tiny model on the transformers engine, whose answers are unmistakable)
takes over. Each escalation check fires on an answer built to fail it, and the client then gets
exactly what `fallback` answers on its own; rules (prompt length, regex, metadata, user, header)
pick the target; a stream through an escalating route is held and replayed; an engine error falls
back; the audit row, /metrics, `slm logs routes` and `slm cost` say where each request went and
why. Bad route config is one line."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_helpers import ServerProcess, needs_llama_server

pytestmark = needs_llama_server

CHAIN = ["local", "fallback"]
CHECKS: dict[str, dict[str, Any]] = {
    "refusal": {"refusal": ["I can't help", "Paris"]},  # the local model is sure to say Paris
    "must-not": {"must_not_include": ["paris"]},  # case-insensitive
    "repeat": {"repetition": True},
    "empty": {"empty": True},
    "json": {"json_schema": True},
    "logprob": {"min_mean_logprob": -0.001},  # no real answer is that sure of every token
}
RULES = [
    {"name": "long-prompt", "prompt_tokens_over": 300, "to": "fallback"},
    {"name": "legal", "pattern": "(?i)lawyer|refund", "to": "fallback"},
    {"name": "vip", "metadata": {"tier": "gold"}, "to": "fallback"},
    {"name": "staff", "user": "^staff-", "to": "fallback"},
    {"name": "header", "header": {"X-Slm-Route": "big"}, "to": "fallback"},
]
ROUTES = [{"id": f"check-{name}", "chain": CHAIN, "escalate": c} for name, c in CHECKS.items()]
ROUTES.append({"id": "support", "chain": CHAIN, "rules": RULES})  # no checks: streams directly
ROUTES.append({"id": "plain", "chain": CHAIN})  # no rules, no checks
CONFIG: dict[str, Any] = {
    # 768 tokens per slot: below the tiny fallback model's 1024, for the context-window fallback
    "llamacpp": {"ctx_size": 1536, "parallel": 2, "threads": 1},
    "limits": {"max_tokens_cap": 48},
    "repetition": {"ngram": 1, "min_repeats": 6},
    "routes": ROUTES,
}
CAPITAL = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
LOOP = [
    {
        "role": "user",
        "content": "Say the word hello over and over: hello hello hello hello hello hello",
    }
]
POEM = [{"role": "user", "content": "Write a short poem about the sea."}]
COLOR = [{"role": "user", "content": "Name a color."}]
CAPITAL_JSON = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {
            "type": "object",
            "properties": {"capital_city": {"type": "string"}},
            "required": ["capital_city"],
        },
    },
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-routes-home")


@pytest.fixture(scope="module")
def server(home: Path, tiny_model_dir: Path):
    models = [{"id": "local", "ref": "default"}, {"id": "fallback", "ref": str(tiny_model_dir)}]
    config = {**CONFIG, "models": models}
    with ServerProcess([], config=config, env={"SLM_HOME": str(home)}) as srv:
        yield srv


def chat(
    server: ServerProcess, model: str, messages: list[dict[str, Any]], **extra: Any
) -> httpx.Response:
    headers = extra.pop("headers", {})
    body = {"model": model, "messages": messages, "max_tokens": 12, "temperature": 0, **extra}
    response = server.post("/v1/chat/completions", body, headers=headers)
    assert response.status_code == 200, response.text
    return response


def content(response: httpx.Response) -> str:
    return response.json()["choices"][0]["message"]["content"] or ""


def audit_row(home: Path, request_id: str) -> dict[str, Any]:
    """The request's audit row (written by the gateway's writer thread shortly after the answer)."""
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(home / "serve" / "audit.db") as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        if row is not None or time.monotonic() > deadline:
            assert row is not None, f"no audit row for {request_id}"
            return dict(row)
        time.sleep(0.05)


def assert_routed(home: Path, response: httpx.Response, route: str, reason: str, by: str) -> None:
    headers = response.headers
    assert (headers["x-slm-route"], headers["x-slm-route-reason"]) == (route, reason)
    assert headers["x-slm-served-by"] == by
    row = audit_row(home, headers["x-request-id"])
    assert (row["model"], row["route"], row["route_reason"]) == (route, route, reason), row
    assert (row["served_by"], row["status"]) == (by, 200), row


def test_routes_are_listed_beside_the_models(server: ServerProcess) -> None:
    cards = {m["id"]: m["owned_by"] for m in server.get("/v1/models").json()["data"]}
    assert cards["support"] == cards["check-refusal"] == "slmkit:route"
    assert {"local", "fallback"} <= set(cards)
    assert server.get("/v1/models/support").json()["id"] == "support"


def test_refusal_escalates_and_the_client_sees_only_the_fallbacks_answer(
    server: ServerProcess, home: Path
) -> None:
    local = content(chat(server, "local", CAPITAL))
    fallback = content(chat(server, "fallback", CAPITAL))
    assert "Paris" in local and "Paris" not in fallback and fallback != local
    routed = chat(server, "check-refusal", CAPITAL)
    assert content(routed) == fallback
    assert routed.json()["model"] == "fallback"
    assert_routed(home, routed, "check-refusal", "escalated:refusal", "fallback")
    # an answer that passes the checks is the local one
    fine = chat(server, "check-refusal", COLOR)
    assert content(fine) == content(chat(server, "local", COLOR))
    assert_routed(home, fine, "check-refusal", "default", "local")


@pytest.mark.parametrize(
    ("route", "messages", "extra", "reason"),
    [
        ("check-must-not", CAPITAL, {}, "must_not_include"),
        ("check-repeat", LOOP, {"max_tokens": 48}, "repetition"),
        ("check-json", CAPITAL, {"response_format": CAPITAL_JSON, "max_tokens": 4}, "json_schema"),
        ("check-logprob", POEM, {}, "low_logprob"),
    ],
    ids=["must-not-include", "repetition", "json-schema", "low-logprob"],
)
def test_each_check_escalates_a_failing_answer(
    server: ServerProcess,
    home: Path,
    route: str,
    messages: list[dict[str, Any]],
    extra: dict[str, Any],
    reason: str,
) -> None:
    routed = chat(server, route, messages, **extra)
    assert_routed(home, routed, route, f"escalated:{reason}", "fallback")
    assert content(routed) == content(chat(server, "fallback", messages, **extra))


def test_empty_answer_escalates(server: ServerProcess, home: Path) -> None:
    first_word = content(chat(server, "local", CAPITAL)).split()[0]
    assert content(chat(server, "local", CAPITAL, stop=[first_word])) == ""
    routed = chat(server, "check-empty", CAPITAL, stop=[first_word])
    assert_routed(home, routed, "check-empty", "escalated:empty", "fallback")


def stream_text(
    server: ServerProcess, model: str, messages: list[dict[str, Any]]
) -> tuple[str, str]:
    """The streamed answer and the request id of a streamed chat."""
    stream = server.client().chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0, stream=True
    )
    chunks = list(stream)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[0].id


def test_a_stream_through_an_escalating_route_is_held_then_replayed(
    server: ServerProcess, home: Path
) -> None:
    text, request_id = stream_text(server, "check-refusal", CAPITAL)
    assert text == content(chat(server, "fallback", CAPITAL)) and "Paris" not in text
    row = audit_row(home, request_id)
    assert (row["route_reason"], row["served_by"], row["stream"]) == (
        "escalated:refusal",
        "fallback",
        1,
    )
    # a route without checks streams straight from its target
    direct, request_id = stream_text(server, "support", CAPITAL)
    assert "Paris" in direct
    row = audit_row(home, request_id)
    assert (row["route_reason"], row["served_by"]) == ("default", "local")


@pytest.mark.parametrize(
    ("messages", "extra", "rule"),
    [
        ([{"role": "user", "content": "Please read this. " * 120}], {}, "long-prompt"),
        ([{"role": "user", "content": "Can I get a REFUND for my order?"}], {}, "legal"),
        (COLOR, {"metadata": {"tier": "gold"}}, "vip"),
        (COLOR, {"user": "staff-42"}, "staff"),
        (COLOR, {"headers": {"x-slm-route": "big"}}, "header"),
    ],
    ids=["prompt-tokens", "regex", "metadata", "user", "header"],
)
def test_rules_pick_the_target(
    server: ServerProcess,
    home: Path,
    messages: list[dict[str, Any]],
    extra: dict[str, Any],
    rule: str,
) -> None:
    routed = chat(server, "support", messages, **extra)
    assert_routed(home, routed, "support", f"rule:{rule}", "fallback")


def test_requests_no_rule_matches_take_the_first_member(server: ServerProcess, home: Path) -> None:
    for extra in ({}, {"metadata": {"tier": "silver"}}, {"user": "customer-staff-1"}):
        routed = chat(server, "support", COLOR, **extra)
        assert_routed(home, routed, "support", "default", "local")


def test_metrics_count_requests_per_route_target_and_reason(server: ServerProcess) -> None:
    labels = {
        "route": "check-must-not",
        "target": "fallback",
        "reason": "escalated:must_not_include",
    }
    routed = server.metric("slm_route_requests_total", **labels)
    answered = server.metric("slm_requests_total", model="check-must-not", status="200")
    for _ in range(2):
        chat(server, "check-must-not", CAPITAL)
    assert server.metric("slm_route_requests_total", **labels) == routed + 2
    assert server.metric("slm_requests_total", model="check-must-not", status="200") == answered + 2


def some_routed_traffic(server: ServerProcess, home: Path) -> None:
    """Requests of each kind the route statistics count, in the audit log when this returns: a rule
    hit and a default answer on `support`, two escalations on `check-refusal` (the tests that
    read the log make their own)."""
    chat(server, "support", [{"role": "user", "content": "Please read this. " * 120}])  # rule
    chat(server, "support", COLOR)  # default: the first member answers
    for _ in range(2):
        last = chat(server, "check-refusal", CAPITAL)
    audit_row(home, last.headers["x-request-id"])  # the writer keeps the order: all are in


def test_slm_logs_routes_shows_local_share_and_reasons(
    slm, server: ServerProcess, home: Path
) -> None:
    some_routed_traffic(server, home)
    db = home / "serve" / "audit.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT served_by FROM requests WHERE route = 'support' AND status = 200"
        ).fetchall()
        (long_prompt,) = conn.execute(
            "SELECT COUNT(*) FROM requests WHERE route_reason = 'rule:long-prompt'"
        ).fetchone()
    local = sum(1 for (by,) in rows if by == "local")
    wide = {"COLUMNS": "200"}
    result = slm("logs", "routes", "--db", str(db), "--window", "1h", "--json", env=wide)
    assert result.returncode == 0, result.stderr
    stats = {s["route"]: s for s in json.loads(result.stdout)}
    assert stats["support"]["local_share"] == pytest.approx(local / len(rows))
    assert stats["support"]["first_member"] == "local"
    assert stats["check-refusal"]["reasons"]["escalated:refusal"] >= 2
    table = slm("logs", "routes", "--db", str(db), "--window", "1h", env=wide)
    assert table.returncode == 0, table.stderr
    support = next(line for line in table.stdout.splitlines() if "support" in line)
    assert f"{local / len(rows):.0%} (local)" in support, support
    assert f"long-prompt {long_prompt}" in support, support
    assert "refusal" in next(ln for ln in table.stdout.splitlines() if "check-refusal" in ln)


def test_slm_cost_measures_the_local_share_from_the_routes(
    slm, server: ServerProcess, home: Path
) -> None:
    some_routed_traffic(server, home)
    db = home / "serve" / "audit.db"
    with sqlite3.connect(db) as conn:
        # a route's first member is who answers its `default` requests (none for the check-*
        # routes that only saw escalations here)
        served = conn.execute(
            "SELECT served_by FROM requests WHERE status = 200 AND route IN "
            "(SELECT route FROM requests WHERE route_reason = 'default')"
        ).fetchall()
    share = sum(1 for (by,) in served if by == "local") / len(served)
    result = slm(
        "cost", "--audit-db", str(db), "--tokens-per-s", "100", "--machine-concurrency", "4",
        "--input-price", "1", "--output-price", "4", "--machine-price", "1", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["local_share"] == pytest.approx(share) and 0 < share < 1
    assert any(n.startswith("local share measured") for n in data["notes"]), data["notes"]


def kill_local_engine(server: ServerProcess) -> None:
    """SIGKILL the local model's llama-server (waiting for the gateway's restart of it if needed)."""
    deadline = time.monotonic() + 60
    while not (children := server.engine_children()):
        assert time.monotonic() < deadline, "the local engine was not restarted"
        time.sleep(0.1)
    (child,) = children
    child.kill()
    child.wait(timeout=10)


def test_a_prompt_over_the_first_members_context_moves_on(
    server: ServerProcess, home: Path
) -> None:
    long = [{"role": "user", "content": "Please read this. " * 200}]  # ~800 tokens: over 768
    refused = server.post(
        "/v1/chat/completions", {"model": "local", "messages": long, "max_tokens": 4}
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    routed = chat(server, "plain", long)
    assert_routed(home, routed, "plain", "fallback:context", "fallback")


def test_an_engine_error_falls_back_down_the_chain(server: ServerProcess, home: Path) -> None:
    """The local engine is killed twice; the gateway restarts it, and the test waits for that so
    that the other tests find it serving in any order."""
    try:
        _falls_back_when_killed(server, home)
    finally:
        server.wait_ready("local")


def _falls_back_when_killed(server: ServerProcess, home: Path) -> None:
    fallback = content(chat(server, "fallback", COLOR))
    kill_local_engine(server)
    routed = chat(server, "support", COLOR)
    assert_routed(home, routed, "support", "fallback:error", "fallback")
    assert content(routed) == fallback
    # a stream through a route without checks falls back too (the error comes before any token)
    kill_local_engine(server)
    text, request_id = stream_text(server, "support", COLOR)
    row = audit_row(home, request_id)
    assert (row["route_reason"], row["served_by"], row["stream"]) == (
        "fallback:error",
        "fallback",
        1,
    )
    assert text == fallback


BAD = [
    (
        "routes:\n  - {id: support, chain: [small], rules: [{name: x, pattern: '(', to: small}]}\n",
        "routes.0.rules.0.pattern: invalid regex '('",
    ),
    (
        "routes:\n  - {id: support, chain: [small], rules: [{name: x, user: '[', to: small}]}\n",
        "routes.0.rules.0.user: invalid regex '['",
    ),
    ("routes:\n  - {id: small, chain: [small]}\n", "routes: route 'small': id is also a model id"),
    (
        "routes:\n  - {id: support, chain: [small, huge]}\n",
        "routes: route 'support': chain.1 'huge' is not a served model id (models: small)",
    ),
    (
        "routes:\n  - {id: support, chain: [small], rules: [{name: x, pattern: a, to: big}]}\n",
        "routes.0: rule 'x' sends to 'big', which is not in the chain (small)",
    ),
    (
        "routes:\n  - {id: support, chain: [small], rules: [{name: x, to: small}]}\n",
        "routes.0.rules.0: give at least one condition",
    ),
    ("routes:\n  - {id: support, chain: []}\n", "routes.0.chain: List should have at least 1"),
    (
        "routes:\n  - {id: support, chain: [small], escalate: {min_mean_logprob: 1}}\n",
        "routes.0.escalate.min_mean_logprob: Input should be less than or equal to 0",
    ),
]


BAD_IDS = ["regex", "user-regex", "id-clash", "unknown-member", "rule-off-chain", "no-condition",
           "empty-chain", "logprob-above-0"]  # fmt: skip


@pytest.mark.parametrize(("routes_yaml", "expected"), BAD, ids=BAD_IDS)
def test_bad_route_config_names_the_field(tmp_path: Path, routes_yaml: str, expected: str) -> None:
    """In-process, through the loader and formatter the CLI uses (one CLI run below)."""
    from slmkit.config import load_config
    from slmkit.errors import ConfigError
    from slmkit.serve.config import ServeConfig

    path = tmp_path / "serve.yaml"
    path.write_text("models:\n  - {id: small, ref: default}\n" + routes_yaml)
    with pytest.raises(ConfigError) as err:
        load_config(path, ServeConfig)
    assert expected in str(err.value) and "\n" not in str(err.value)


def one_line_error(result: Any) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    return str(lines[0])


def test_bad_route_config_is_one_line_error(slm, tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("models:\n  - {id: small, ref: default}\n" + BAD[0][0])
    line = one_line_error(slm("serve", "--config", str(path), "--port", "0"))
    assert f"{path}:4: {BAD[0][1]}" in line, line  # the line of the rule


def test_routes_over_models_given_on_the_command_line_are_checked_too(slm, tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("routes:\n  - {id: support, chain: [small, big]}\n")
    line = one_line_error(
        slm("serve", "--model", "small=default", "--config", str(path), "--port", "0")
    )
    assert "routes: route 'support': chain.1 'big' is not a served model id (models: small)" in line
