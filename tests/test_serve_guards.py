"""Guards on a real `slm serve default`: max_tokens cap, queue-full 429, body size limit, response
cache, output filter (streamed and not), context policies prune / summarize / reject, repetition
retry, CORS off by default, speculative decoding with a draft model, the request timeout, and
admission given back exactly once by failed requests."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from serve_helpers import ServerProcess, needs_llama_server

pytestmark = needs_llama_server

CONFIG = {
    "llamacpp": {"ctx_size": 1024, "parallel": 2, "threads": 1},
    "limits": {"max_tokens_cap": 48, "max_queue": 1, "max_body_bytes": 4096},
    "cache": {"enabled": True},
    "output_filter": {"blocklist": ["Paris"], "replacement": "[blocked]"},
    "repetition": {"ngram": 1, "min_repeats": 6},
    "audit": {"log_text": True},
}
CAPITAL = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-guards")


@pytest.fixture(scope="module")
def server(home: Path):
    with ServerProcess(["default"], config=CONFIG, env={"SLM_HOME": str(home)}) as srv:
        yield srv


def test_max_tokens_is_capped(server: ServerProcess) -> None:
    reply = server.client().chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Write a long essay about the sea."}],
        max_tokens=400,
        temperature=0.7,
        seed=5,
    )
    assert reply.usage.completion_tokens == 48 and reply.choices[0].finish_reason == "length"


def test_blocklisted_words_are_replaced_streamed_and_not(server: ServerProcess, home: Path) -> None:
    client = server.client()
    plain = client.chat.completions.create(
        model="default", messages=CAPITAL, max_tokens=20, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model="default", messages=CAPITAL, max_tokens=21, temperature=0, stream=True
        )
    )
    streamed_text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    for text in (plain.choices[0].message.content, streamed_text):
        assert "[blocked]" in text and "Paris" not in text
    assert server.metric("slm_output_redactions_total", model="default") >= 2
    # the audit log keeps what the client was sent, streamed or not, not the engine's raw text
    sent = {plain.id: plain.choices[0].message.content, chunks[0].id: streamed_text}
    for _ in range(50):
        with contextlib.closing(sqlite3.connect(home / "serve" / "audit.db")) as db:
            logged = dict(
                db.execute("SELECT id, response_text FROM requests WHERE id IN (?, ?)", list(sent))
            )
        if len(logged) == 2:
            break
        time.sleep(0.1)
    assert logged == sent


def test_deterministic_requests_hit_the_cache(server: ServerProcess) -> None:
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": "Name a color."}],
        "max_tokens": 8,
        "temperature": 0,
    }
    first, second = (
        server.post("/v1/chat/completions", body),
        server.post("/v1/chat/completions", body),
    )
    assert (first.headers["x-slm-cache"], second.headers["x-slm-cache"]) == ("miss", "hit")
    assert (
        first.json()["choices"] == second.json()["choices"]
        and first.json()["id"] != second.json()["id"]
    )
    sampled = server.post("/v1/chat/completions", {**body, "temperature": 0.9})
    assert "x-slm-cache" not in sampled.headers  # not deterministic: never cached
    assert server.metric("slm_cache_requests_total", result="hit") == 1


def test_full_queue_answers_429(server: ServerProcess) -> None:
    barrier = threading.Barrier(8)

    def ask(i: int) -> object:
        barrier.wait()
        try:
            return server.client().chat.completions.create(
                model="default",
                messages=[{"role": "user", "content": f"Tell me story number {i}."}],
                max_tokens=24,
                temperature=0.8,
            )
        except openai.RateLimitError as exc:
            return exc

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(8)))
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert (
        limited and len(limited) < 8
    )  # max_queue is 1: one at a time gets in, the rest are told to retry
    assert limited[0].status_code == 429 and limited[0].code == "rate_limit_exceeded"
    assert int(limited[0].response.headers["Retry-After"]) >= 1
    assert server.metric("slm_requests_total", status="429") == len(limited)


def test_body_size_limit(server: ServerProcess) -> None:
    body = {"model": "default", "messages": [{"role": "user", "content": "x" * 5000}]}
    response = server.post("/v1/chat/completions", body)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


LONG_CHAT = (
    [{"role": "system", "content": "You are a helpful assistant."}]
    + [
        {
            "role": role,
            "content": f"Turn {i}: " + "the quick brown fox jumps over the lazy dog " * 6,
        }
        for i, role in zip(range(12), ["user", "assistant"] * 6, strict=True)
    ]
    + [{"role": "user", "content": "What animal jumps?"}]
)


@pytest.mark.parametrize("policy", ["prune", "summarize"])
def test_context_policies_make_a_long_chat_fit(server: ServerProcess, policy: str) -> None:
    raw = server.client().chat.completions.with_raw_response.create(
        model="default",
        messages=LONG_CHAT,
        max_tokens=16,
        temperature=0,
        extra_body={"context_policy": policy},
    )
    action = "pruned" if policy == "prune" else "summarized"
    assert int(raw.headers[f"x-slm-context-{action}"]) >= 1
    assert raw.parse().usage.prompt_tokens < 512
    assert server.metric("slm_context_actions_total", action=action) >= 1


def test_reject_is_the_default_context_policy(server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(model="default", messages=LONG_CHAT, max_tokens=16)
    assert err.value.code == "context_length_exceeded"


def test_repetition_loop_is_stopped_and_retried(server: ServerProcess) -> None:
    prompt = [
        {
            "role": "user",
            "content": "Say the word hello over and over: hello hello hello hello hello hello",
        }
    ]
    from slmkit.answer_checks import find_repetition

    client, loop = server.client(), CONFIG["repetition"]
    stopped = server.metric("slm_repetition_events_total", action="stopped")
    retried = server.metric("slm_repetition_events_total", action="retried")
    # streamed: no retry is possible, the loop is cut as soon as it is seen (not run to max_tokens)
    stream = client.chat.completions.create(
        model="default", messages=prompt, max_tokens=48, temperature=0, stream=True
    )
    chunks = [c for c in stream if c.choices]
    looped = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop", looped
    assert find_repetition(looped, loop["ngram"], loop["min_repeats"]) is not None, looped
    assert looped.lower().split().count("hello") < 12, looped
    # not streamed: retried once with a repetition penalty, and the answer given back is the retry
    reply = client.chat.completions.create(
        model="default", messages=prompt, max_tokens=48, temperature=0
    )
    text = reply.choices[0].message.content or ""
    assert find_repetition(text, loop["ngram"], loop["min_repeats"]) is None, text
    assert "hello hello hello" not in text.lower() and text != looped, text
    assert server.metric("slm_repetition_events_total", action="retried") == retried + 1
    assert server.metric("slm_repetition_events_total", action="stopped") == stopped + 2


def test_cors_is_off_by_default(server: ServerProcess) -> None:
    response = httpx.options(
        server.base_url + "/v1/models",
        headers={"Origin": "http://example.test", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in response.headers


def test_draft_model_is_passed_to_llama_server(tmp_path) -> None:
    from slmkit.models.embedded import embedded_gguf_path

    gguf = str(embedded_gguf_path())
    config = {
        "models": [{"id": "fast", "ref": gguf, "draft_model": gguf}],
        "llamacpp": {"ctx_size": 512, "parallel": 1, "threads": 1},
    }
    with ServerProcess([], config=config, env={"SLM_HOME": str(tmp_path)}) as srv:
        (child,) = srv.engine_children()
        assert child.cmdline()[child.cmdline().index("-md") + 1] == gguf
        reply = srv.client().chat.completions.create(
            model="fast", messages=CAPITAL, max_tokens=12, temperature=0
        )
        assert "Paris" in reply.choices[0].message.content


def test_request_timeout_gives_408_before_any_stream_and_frees_the_engine(tmp_path) -> None:
    """1 ms is deterministic: not even the first token of the smallest model comes back that fast,
    so both paths time out before a response header is sent. (A timeout after the first token,
    which arrives as a final `data: {"error": ...}` event, cannot be timed reliably on a shared
    CPU, so it is covered by the unit test of `next_delta` only.)"""
    import sqlite3

    config = {
        "llamacpp": {"ctx_size": 1024, "parallel": 2, "threads": 1},
        "limits": {"request_timeout_s": 0.001, "max_tokens_cap": 400},
        "repetition": {"enabled": False},
    }
    dragon = [{"role": "user", "content": "Write a very long story about a dragon."}]
    with ServerProcess(["default"], config=config, env={"SLM_HOME": str(tmp_path)}) as srv:
        for stream in (False, True):
            body = {"model": "default", "messages": dragon, "max_tokens": 400, "stream": stream}
            response = srv.post("/v1/chat/completions", {**body, "temperature": 0})
            assert response.status_code == 408
            assert response.headers["content-type"].startswith("application/json")
            assert response.json()["error"] == {
                "message": "The request did not finish within 0.001 s.",
                "type": "timeout_error",
                "param": None,
                "code": "request_timeout",
            }
        with pytest.raises(openai.APIStatusError) as err:
            srv.client().chat.completions.create(model="default", messages=dragon, max_tokens=400)
        assert err.value.status_code == 408 and err.value.code == "request_timeout"
        (child,) = srv.engine_children()
        port = child.cmdline()[child.cmdline().index("--port") + 1]
        for _ in range(100):  # llama-server stops once it sees the gateway closed the request
            slots = httpx.get(f"http://127.0.0.1:{port}/slots").json()
            if not any(s["is_processing"] for s in slots):
                break
            time.sleep(0.1)
        assert not any(s["is_processing"] for s in slots)
        tokens = [s.get("next_token") or {} for s in slots]  # a list in newer llama-server
        decoded = [(t[0] if isinstance(t, list) else t).get("n_decoded", 0) for t in tokens]
        assert max(decoded) < 50  # stopped, not left running to max_tokens
        assert srv.get("/health").json()["engines"][0]["restarts"] == 0
        assert srv.metric("slm_requests_total", status="408") == 3
    rows = sqlite3.connect(tmp_path / "serve" / "audit.db").execute(
        "SELECT status, error_code, stream FROM requests ORDER BY ts"
    )
    assert [tuple(r) for r in rows] == [
        (408, "request_timeout", 0),
        (408, "request_timeout", 1),
        (408, "request_timeout", 0),
    ]


def test_failed_requests_give_their_admission_back_once(tmp_path) -> None:
    """400 (prompt too long, from llama-server), 408 and 503 answers each free their place in the
    queue exactly once: afterwards nothing is in flight and the 429 limit admits exactly
    `max_queue` requests, no more."""
    config = {
        "llamacpp": {"ctx_size": 8192, "parallel": 2, "threads": 1},
        "limits": {"max_queue": 2, "max_tokens_cap": 4000, "request_timeout_s": 4},
        "repetition": {"enabled": False},
    }
    endless = {  # end-of-text banned: 4000 tokens take far longer than the 4 s request timeout
        "model": "default",
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "max_tokens": 4000,
        "temperature": 0,
        "logit_bias": {"0": -100, "2": -100},
    }
    too_long = {"model": "default", "messages": [{"role": "user", "content": "word " * 9000}]}
    with ServerProcess(["default"], config=config, env={"SLM_HOME": str(tmp_path)}) as srv:

        def status(body: dict) -> int:
            return srv.post("/v1/chat/completions", body).status_code

        statuses = [status(too_long) for _ in range(3)]
        with ThreadPoolExecutor(2) as pool:
            statuses += pool.map(status, [endless, endless])
        (child,) = srv.engine_children()
        child.kill()
        child.wait(10)
        statuses.append(status({**endless, "max_tokens": 4}))
        assert statuses == [400, 400, 400, 408, 408, 503]
        for _ in range(300):
            if srv.get("/health").status_code == 200:
                break
            time.sleep(0.1)
        assert srv.metric("slm_requests_in_flight", model="default") == 0

        url = srv.base_url + "/v1/chat/completions"
        with contextlib.ExitStack() as held:  # max_queue slow streams, open at the same time
            for _ in range(2):
                stream = held.enter_context(
                    httpx.stream("POST", url, json={**endless, "stream": True}, timeout=30)
                )
                assert stream.status_code == 200
            assert srv.metric("slm_requests_in_flight", model="default") == 2
            assert status({**endless, "max_tokens": 4}) == 429
        assert srv.metric("slm_requests_total", status="429") == 1
