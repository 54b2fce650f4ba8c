"""`slm serve default` (llama.cpp engine) driven by the official openai client: models, chat, streams,
max_completion_tokens and sampling fields (checked in llama-server's slots), stop sequences,
determinism, every error status/type/code, auth (flag and `SLM_API_KEYS`), disconnect cancellation,
audit log + feedback + `slm logs`, concurrency, and engine crash -> 503 -> recovery."""

from __future__ import annotations

import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from serve_helpers import ServerProcess, needs_llama_server

pytestmark = needs_llama_server

KEY = "sk-test-123"
CONFIG = {
    "llamacpp": {"ctx_size": 2048, "parallel": 4, "threads": 1},
    "limits": {"max_tokens_cap": 512, "request_timeout_s": 300},
    "audit": {"log_text": True},
}
HELLO = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-api-home")


@pytest.fixture(scope="module")
def server(home: Path):
    with ServerProcess(["default"], api_key=KEY, config=CONFIG, env={"SLM_HOME": str(home)}) as srv:
        yield srv


def chat(server: ServerProcess, **kwargs):
    params = {"model": "default", "messages": HELLO, "max_tokens": 24, "temperature": 0, **kwargs}
    return server.client().chat.completions.create(**params)


def test_models_are_listed(server: ServerProcess) -> None:
    models = server.client().models.list().data
    assert [m.id for m in models] == ["default"]
    assert server.client().models.retrieve("default").owned_by == "slmkit:llamacpp"


def test_chat_answers_with_usage(server: ServerProcess) -> None:
    reply = chat(server)
    assert reply.id.startswith("chatcmpl-") and reply.model == "default"
    assert "Paris" in reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 5 and 0 < reply.usage.completion_tokens <= 24
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_stream_chunks_match_the_non_streamed_answer_and_end_with_usage(
    server: ServerProcess,
) -> None:
    expected = chat(server).choices[0].message.content
    chunks = list(chat(server, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3  # really streamed
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    no_usage = list(chat(server, stream=True))
    assert all(c.usage is None for c in no_usage)


def test_completions_endpoint(server: ServerProcess) -> None:
    client = server.client()
    reply = client.completions.create(
        model="default", prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert reply.object == "text_completion" and reply.choices[0].text
    streamed = client.completions.create(
        model="default", prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text


def test_max_completion_tokens_and_sampling_fields_reach_llama_server(
    server: ServerProcess,
) -> None:
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    sampling = {"top_p": 0.37, "presence_penalty": 0.55, "frequency_penalty": 0.25}
    client = server.client()
    reply = client.chat.completions.create(
        model="default", messages=story, max_completion_tokens=5, seed=7, **sampling
    )
    assert reply.usage.completion_tokens == 5 and reply.choices[0].finish_reason == "length"
    slots = httpx.get(_engine_url(server) + "/slots").json()
    params = [s.get("params") or {} for s in slots]  # a slot that never ran has no params
    mine = [p for p in params if p.get("top_p") == pytest.approx(0.37)]
    assert len(mine) == 1  # the slot that ran this request keeps its parameters
    assert {k: mine[0][k] for k in sampling} == pytest.approx(sampling)
    assert mine[0]["n_predict"] == 5
    streamed = client.chat.completions.create(
        model="default",
        messages=story,
        max_completion_tokens=3,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
        **sampling,
    )
    assert list(streamed)[-1].usage.completion_tokens == 3
    # /v1/completions has no max_completion_tokens: an odd value there is ignored, not a 500
    plain = server.post(
        "/v1/completions",
        {"model": "default", "prompt": "Once", "max_tokens": 2, "max_completion_tokens": "x"},
    )
    assert plain.status_code == 200 and plain.json()["usage"]["completion_tokens"] == 2


def test_stop_sequence_cuts_the_answer(server: ServerProcess) -> None:
    full = chat(server, max_tokens=40).choices[0].message.content
    words = full.split()
    stop = words[len(words) // 2]
    cut = chat(server, max_tokens=40, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(stop)]


def test_same_seed_gives_the_same_sampled_text(server: ServerProcess) -> None:
    story = [{"role": "user", "content": "Tell me a short story about a cat."}]
    first = (
        chat(server, messages=story, temperature=1.0, seed=1234, max_tokens=30)
        .choices[0]
        .message.content
    )
    again = (
        chat(server, messages=story, temperature=1.0, seed=1234, max_tokens=30)
        .choices[0]
        .message.content
    )
    assert first == again and len(first) > 20
    assert chat(server).choices[0].message.content == chat(server).choices[0].message.content
    # the seed and the temperature must reach the sampler (a gateway dropping either passes above):
    # other seeds give other stories, and temperature 0 gives one answer whatever the seed
    others = {
        chat(server, messages=story, temperature=1.0, seed=seed, max_tokens=30)
        .choices[0]
        .message.content
        for seed in (1, 2, 3)
    }
    assert len(others | {first}) >= 3, others
    greedy = {
        chat(server, messages=story, seed=seed, max_tokens=30).choices[0].message.content
        for seed in (1, 2)
    }
    assert len(greedy) == 1 and first not in greedy


BAD_REQUESTS = [
    # (body, status, type, code, param)
    (b"{not json", 400, "invalid_request_error", "invalid_json", None),
    ({"model": "default"}, 400, "invalid_request_error", "missing_required_parameter", "messages"),
    (
        {"model": "default", "messages": "hi"},
        400,
        "invalid_request_error",
        "invalid_value",
        "messages",
    ),
    (
        {"model": "default", "messages": HELLO, "max_tokens": 0},
        400,
        "invalid_request_error",
        "invalid_value",
        "max_tokens",
    ),
    (
        {"model": "default", "messages": HELLO, "max_tokens": -5},
        400,
        "invalid_request_error",
        "invalid_value",
        "max_tokens",
    ),
    (
        {"model": "default", "messages": HELLO, "temperature": 2.5},
        400,
        "invalid_request_error",
        "invalid_value",
        "temperature",
    ),
    (
        {"model": "default", "messages": HELLO, "n": 2},
        400,
        "invalid_request_error",
        "invalid_value",
        "n",
    ),
    (
        {"model": "nope", "messages": HELLO},
        404,
        "invalid_request_error",
        "model_not_found",
        "model",
    ),
]


@pytest.mark.parametrize(("body", "status", "type_", "code", "param"), BAD_REQUESTS)
def test_errors_have_openai_shape_and_status(
    server: ServerProcess, body, status, type_, code, param
) -> None:
    for stream in (False, True):
        if isinstance(body, dict):
            response = server.post("/v1/chat/completions", {**body, "stream": stream})
        else:
            response = server.post(
                "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
            )
        assert response.status_code == status
        assert response.headers["content-type"].startswith("application/json")
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"], error["param"]) == (type_, code, param)


def test_too_long_prompt_is_rejected_before_streaming(server: ServerProcess) -> None:
    long_text = "word " * 700  # per-slot context is 2048 / 4 = 512 tokens
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as err:
            chat(server, messages=[{"role": "user", "content": long_text}], stream=stream)
        assert err.value.status_code == 400 and err.value.code == "context_length_exceeded"


def test_openai_client_exceptions(server: ServerProcess) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        chat(server, model="missing")
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        chat(server, max_tokens=0)


def test_api_key_is_required_except_for_health(server: ServerProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.get(server.base_url + "/v1/models", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.base_url + "/metrics").status_code == 401
    assert httpx.get(server.base_url + "/health").json()["status"] == "ok"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url + "/v1", api_key="bad", max_retries=0).models.list()


def test_keys_from_the_slm_api_keys_variable_alone_are_enforced(tmp_path: Path) -> None:
    env = {"SLM_HOME": str(tmp_path), "SLM_API_KEYS": " sk-env-1 , sk-env-2,"}
    small = {"llamacpp": {"ctx_size": 512, "parallel": 1, "threads": 1}}
    with ServerProcess(["default"], config=small, env=env) as srv:  # no --api-key, no api_keys
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Bearer sk-env-3"},
        ):
            response = httpx.get(srv.base_url + "/v1/models", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
        for key in ("sk-env-1", "sk-env-2"):  # spaces and the empty item are ignored
            response = httpx.get(
                srv.base_url + "/v1/models", headers={"Authorization": f"Bearer {key}"}
            )
            assert response.status_code == 200
        with pytest.raises(openai.AuthenticationError):
            srv.client().models.list()  # the harness sends no key: "unused"
        srv.api_key = "sk-env-2"
        reply = srv.client().chat.completions.create(
            model="default", messages=HELLO, max_tokens=4, temperature=0
        )
        assert reply.usage.completion_tokens > 0


def _engine_url(server: ServerProcess) -> str:
    (child,) = server.engine_children()
    cmd = child.cmdline()
    return f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}"


def test_client_disconnect_cancels_generation_and_frees_the_slot(server: ServerProcess) -> None:
    engine = _engine_url(server)
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "max_tokens": 500,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream(
        "POST",
        server.base_url + "/v1/chat/completions",
        json=body,
        headers=server.headers(),
        timeout=60,
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        got = [next(lines) for _ in range(8)]
        assert any('"content"' in line for line in got)
        assert any(s["is_processing"] for s in httpx.get(engine + "/slots").json())
    for _ in range(100):  # the slot is released once llama-server notices the closed connection
        slots = httpx.get(engine + "/slots").json()
        if not any(s["is_processing"] for s in slots):
            break
        time.sleep(0.05)
    assert not any(s["is_processing"] for s in slots)
    decoded = max(
        s.get("next_token", [{}])[0].get("n_decoded", 0)
        if isinstance(s.get("next_token"), list)
        else s.get("next_token", {}).get("n_decoded", 0)
        for s in slots
    )
    assert decoded < 400  # stopped long before max_tokens
    assert server.metric("slm_requests_total", status="499") >= 1


def test_sixteen_concurrent_clients_ten_requests_each_no_failures(server: ServerProcess) -> None:
    client = server.client()

    def one_client(i: int) -> int:
        ok = 0
        for j in range(10):
            reply = client.chat.completions.create(
                model="default",
                messages=[{"role": "user", "content": f"Say a number: {i * 10 + j}"}],
                max_tokens=6,
                temperature=0,
                stream=(j % 2 == 0),
            )
            if j % 2 == 0:
                reply = list(reply)
                ok += int(bool(reply))
            else:
                ok += int(reply.choices[0].finish_reason in ("stop", "length"))
        return ok

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(one_client, range(16))) == 160


def test_metrics_audit_log_feedback_and_logs(server: ServerProcess, home: Path, slm) -> None:
    for _ in range(10):  # the counts below hold whichever tests ran before
        chat(server, messages=[{"role": "user", "content": "Tell me about the sea."}])
    reply = chat(
        server, messages=[{"role": "user", "content": "My mail is ann@example.com, say hi"}]
    )
    feedback = server.post(
        "/v1/feedback", {"id": reply.id, "rating": -1, "correction": "Hello Ann!"}
    )
    assert feedback.status_code == 200 and feedback.json()["stored"] is True
    missing = server.post("/v1/feedback", {"id": "chatcmpl-unknown", "rating": 1})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert server.post("/v1/feedback", {"id": reply.id, "rating": 5}).status_code == 400

    assert server.metric("slm_requests_total", model="default", status="200") >= 10
    assert server.metric("slm_requests_total", status="400") >= 1
    assert server.metric("slm_time_to_first_token_seconds_count", model="default") >= 10
    assert server.metric("slm_time_per_output_token_seconds_count", model="default") >= 1
    assert server.metric("slm_completion_tokens_total", model="default") > 100
    assert server.metric("slm_engine_up", model="default") == 1
    # memory read at the scrape: the gateway's own, and its llama-server's
    (engine,) = server.engine_children()
    engine_rss = server.metric("slm_engine_resident_bytes", model="default")
    assert engine_rss == pytest.approx(engine.memory_info().rss, rel=0.25)
    assert server.metric("slm_process_resident_bytes") > 50e6

    db = home / "serve" / "audit.db"
    conn = sqlite3.connect(db)
    row = conn.execute(
        "SELECT key_id, prompt_text, status FROM requests WHERE id = ?", (reply.id,)
    ).fetchone()
    assert row[0].startswith("key-") and KEY not in row[0]
    assert "[email]" in row[1] and "ann@example.com" not in row[1] and row[2] == 200
    assert conn.execute("SELECT rating, correction FROM feedback").fetchall() == [
        (-1, "Hello Ann!")
    ]

    stats = slm("logs", "--db", str(db), "--json", env={"SLM_HOME": str(home)})
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout)
    assert (
        data["requests"] >= 10
        and data["latency_p50"] <= data["latency_p99"]
        and data["tokens_per_s"] > 0
    )
    table = slm(
        "logs", "--db", str(db), "--last", "3", env={"SLM_HOME": str(home), "COLUMNS": "200"}
    )
    assert reply.id[:12] in table.stdout and "p95" in table.stdout
    listed = slm("logs", "feedback", "--db", str(db), env={"SLM_HOME": str(home), "COLUMNS": "200"})
    assert "Hello Ann!" in listed.stdout


def test_engine_crash_gives_503_then_recovers(server: ServerProcess) -> None:
    (child,) = server.engine_children()
    child.kill()
    child.wait(10)
    response = server.post(
        "/v1/chat/completions", {"model": "default", "messages": HELLO, "max_tokens": 4}
    )
    assert response.status_code == 503
    assert (
        response.json()["error"]["code"] == "engine_unavailable"
        and int(response.headers["Retry-After"]) > 0
    )
    for _ in range(300):
        if server.get("/health").status_code == 200:
            break
        time.sleep(0.1)
    assert "Paris" in chat(server).choices[0].message.content
    (new_child,) = server.engine_children()
    assert new_child.pid != child.pid
    assert server.metric("slm_engine_restarts_total", model="default") == 1
    assert server.metric("slm_requests_total", status="503") >= 1


def test_shutdown_stops_the_engine(home: Path) -> None:
    srv = ServerProcess(["default"], config=CONFIG, env={"SLM_HOME": str(home)})
    with srv:
        (child,) = srv.engine_children()
    assert srv.proc is not None and srv.proc.returncode == 0
    child.wait(10)
    assert not child.is_running()
