"""Upstream models: a second real `slm serve default` on loopback, behind an API key, is served by the
gateway under the id `big` (remote name `default`). It answers like a local model (plain and
streamed, through the openai client, same errors), its cost is counted from usage x prices, its
key appears nowhere (models, metrics, health, audit db, log), and an unreachable, silent or
key-refusing upstream is an OpenAI-shaped 502/504, never a 500; in a pool, a dead upstream is
retried on the other and cooled. Bad upstream config is one line."""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

import openai
import pytest

from serve_helpers import ServerProcess, needs_llama_server
from slmkit.child_process import free_port

pytestmark = needs_llama_server

UP_KEY = "sk-upstream-secret-7f3a9c"
WRONG_KEY = "sk-not-the-upstream-key-41d2"
PRICE_IN, PRICE_OUT = 0.15, 0.60
HELLO = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def silent_port():
    """A port that accepts connections and never answers (a hung upstream)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory):
    env = {"SLM_HOME": str(tmp_path_factory.mktemp("upstream-home"))}
    config = {"llamacpp": {"ctx_size": 1024, "parallel": 2, "threads": 1}}
    with ServerProcess(["default"], api_key=UP_KEY, config=config, env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-home")


@pytest.fixture(scope="module")
def gateway(upstream: ServerProcess, home: Path, silent_port: int):
    url = upstream.base_url + "/v1"
    big = {
        "url": url,
        "api_key_env": "BIG_API_KEY",
        "model": "default",
        "price_in_per_mtok": PRICE_IN,
        "price_out_per_mtok": PRICE_OUT,
        "timeout_s": 60,
    }
    dead_url = f"http://127.0.0.1:{free_port()}/v1"
    config = {
        "models": [
            {"id": "big", "upstream": big},
            {"id": "gone", "upstream": {"url": dead_url}},
            {
                "id": "hung",
                "upstream": {"url": f"http://127.0.0.1:{silent_port}/v1", "timeout_s": 1},
            },
            {"id": "badkey", "upstream": {**big, "api_key_env": "WRONG_KEY"}},
            {
                "id": "mixed",  # a pool of two upstreams, one of them dead
                "deployments": [{"upstream": big}, {"upstream": {"url": dead_url}}],
                "strategy": "round-robin",
                "allowed_fails": 1,
            },
        ],
        "audit": {"log_text": True},
    }
    env = {"SLM_HOME": str(home), "BIG_API_KEY": UP_KEY, "WRONG_KEY": WRONG_KEY}
    with ServerProcess([], config=config, env=env) as srv:
        yield srv


def ask(server: ServerProcess, model: str = "big", **kwargs):
    params = {"model": model, "messages": HELLO, "max_tokens": 12, "temperature": 0, **kwargs}
    return server.client().chat.completions.create(**params)


def cost(server: ServerProcess) -> float:
    return server.metric("slm_upstream_cost_usd_total", model="big")


def test_upstream_answers_like_the_upstream_itself(
    gateway: ServerProcess, upstream: ServerProcess
) -> None:
    reply = ask(gateway)
    direct = ask(upstream, model="default")
    assert reply.model == "big" and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.content == direct.choices[0].message.content
    assert "Paris" in reply.choices[0].message.content
    assert reply.usage.prompt_tokens == direct.usage.prompt_tokens
    assert reply.usage.completion_tokens == direct.usage.completion_tokens
    card = gateway.client().models.retrieve("big")
    assert card.owned_by == "slmkit:remote"
    assert gateway.metric("slm_requests_total", model="big", status="200") >= 1


def test_stream_through_the_upstream(gateway: ServerProcess) -> None:
    whole = ask(gateway).choices[0].message.content
    stream = ask(gateway, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole and len([c for c in chunks if c.choices]) > 2
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    assert {c.model for c in chunks} == {"big"}


def test_cost_is_usage_times_prices(gateway: ServerProcess) -> None:
    before = cost(gateway)
    usage = ask(gateway, max_tokens=7).usage
    spent = cost(gateway) - before
    expected = (usage.prompt_tokens * PRICE_IN + usage.completion_tokens * PRICE_OUT) / 1e6
    assert usage.completion_tokens == 7 and spent == pytest.approx(expected, rel=1e-6)
    # a stream is charged once its usage arrives, which is before its last event
    before = cost(gateway)
    chunks = list(ask(gateway, max_tokens=5, stream=True, stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    expected = (usage.prompt_tokens * PRICE_IN + usage.completion_tokens * PRICE_OUT) / 1e6
    assert cost(gateway) - before == pytest.approx(expected, rel=1e-6)
    assert gateway.metric("slm_upstream_cost_usd_total", model="gone") == 0


def test_upstream_errors_keep_their_meaning(gateway: ServerProcess) -> None:
    long_prompt = [{"role": "user", "content": "word " * 900}]  # > the upstream's 512 per slot
    with pytest.raises(openai.BadRequestError) as refused:
        ask(gateway, messages=long_prompt)
    assert refused.value.code == "context_length_exceeded"
    assert "maximum context length is 512" in refused.value.message


@pytest.mark.parametrize(
    ("model", "status", "code", "words"),
    [
        ("gone", 502, "upstream_error", "unreachable"),
        ("hung", 504, "upstream_timeout", "no answer within 1 s"),
        ("badkey", 502, "upstream_error", "credentials (WRONG_KEY)"),
    ],
)
def test_failing_upstream_is_an_openai_shaped_gateway_error(
    gateway: ServerProcess, model: str, status: int, code: str, words: str
) -> None:
    before = gateway.metric("slm_requests_total", model=model, status=str(status))
    with pytest.raises(openai.APIStatusError) as failed:
        ask(gateway, model=model)
    assert failed.value.status_code == status and failed.value.code == code
    assert failed.value.type == "server_error" and words in failed.value.message
    with pytest.raises(openai.APIStatusError) as streamed:  # decided before any stream header
        ask(gateway, model=model, stream=True)
    assert streamed.value.status_code == status
    raw = gateway.post("/v1/chat/completions", {"model": model, "messages": HELLO})
    assert raw.status_code == status
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
    assert gateway.metric("slm_requests_total", model=model, status=str(status)) == before + 3


def test_a_dead_upstream_in_a_pool_is_retried_and_cooled(gateway: ServerProcess) -> None:
    replies = [ask(gateway, model="mixed", max_tokens=3) for _ in range(4)]
    assert all(r.choices[0].message.content for r in replies)

    def sent(replica: str, **outcome: str) -> float:
        return gateway.metric(
            "slm_replica_requests_total", model="mixed", replica=replica, **outcome
        )

    assert sent("remote-0", outcome="ok") == 4
    assert sent("remote-1", outcome="failed") == sent("remote-1") == 1  # then it was cooled
    assert gateway.metric("slm_replica_up", model="mixed", replica="remote-1") == 0
    assert gateway.metric("slm_upstream_cost_usd_total", model="mixed") > 0


def test_key_appears_nowhere(gateway: ServerProcess, home: Path) -> None:
    reply = ask(gateway)
    with pytest.raises(openai.APIStatusError):
        ask(gateway, model="badkey")
    db = home / "serve" / "audit.db"
    conn = sqlite3.connect(db)
    deadline = time.monotonic() + 10
    while not conn.execute("SELECT 1 FROM requests WHERE id = ?", (reply.id,)).fetchone():
        assert time.monotonic() < deadline, "the audit row never came"
        time.sleep(0.1)
    row = conn.execute(
        "SELECT model, status, prompt_tokens, completion_tokens FROM requests WHERE id = ?",
        (reply.id,),
    ).fetchone()
    assert row == ("big", 200, reply.usage.prompt_tokens, reply.usage.completion_tokens)
    dump = "\n".join(conn.iterdump())
    conn.close()
    seen = {
        "/v1/models": gateway.get("/v1/models").text,
        "/metrics": gateway.get("/metrics").text,
        "/health": gateway.get("/health").text,
        "audit db": dump,
        "server log": Path(gateway._log.name).read_text(errors="replace"),
    }
    for where, text in seen.items():
        for secret in (UP_KEY, WRONG_KEY):
            assert secret not in text, f"{secret} in {where}"
    health = {e["id"]: e for e in gateway.get("/health").json()["engines"]}
    assert health["big"]["engine"] == "remote" and health["big"]["model"] == "default"


@pytest.mark.parametrize(
    ("yaml_text", "env", "expected"),
    [
        (
            "models:\n  - id: big\n    ref: default\n    upstream: {url: http://127.0.0.1:9/v1}\n",
            {},
            "serve.yaml:2: models.0: give only one of `ref`, `upstream`, `deployments`, `ab` "
            "(got ref and upstream)",
        ),
        (
            "models:\n  - id: big\n",
            {},
            "serve.yaml:2: models.0: give `ref`, `upstream`, `deployments` or `ab`",
        ),
        (
            "models:\n  - id: big\n    upstream: {url: ftp://host/v1}\n",
            {},
            "models.0.upstream.url: url must start with http:// or https://",
        ),
        (
            "models:\n  - id: big\n    upstream: {url: http://127.0.0.1:9/v1, api_key_env: NO_SUCH_VAR_9}\n",
            {},
            "models.0.upstream.api_key_env: environment variable NO_SUCH_VAR_9 is not set",
        ),
    ],
    ids=["ref-and-upstream", "neither", "bad-url", "unset-key-env"],
)
def test_bad_upstream_config_is_one_line_error(
    slm, tmp_path: Path, yaml_text: str, env: dict[str, str], expected: str
) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml_text)
    result = slm("serve", "--config", str(path), "--port", "0", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], lines
