"""Pure pieces of the gateway: repetition detection, the streaming output filter, context pruning,
the response cache, request validation, percentiles, the audit log and `slm logs`."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from slmkit.answer_checks import find_repetition
from slmkit.serve.audit import AuditLog, AuditRecord, key_id
from slmkit.serve.config import AuditSettings, OutputFilter, RepetitionGuard, ServeConfig
from slmkit.serve.guards import (
    RepetitionDetector,
    StreamingFilter,
    prune_messages,
)
from slmkit.serve.logs import check_alerts, percentile, window_stats
from slmkit.serve.protocol import ChatCompletionRequest, generation_request


def test_repetition_found_only_for_back_to_back_loops() -> None:
    loop = "Sure. " + "I like green apples a lot. " * 4
    assert find_repetition(loop, min_unit=4, min_repeats=4) == 7
    varied = "I like green apples. I like red apples. I like blue cars. I like old songs."
    assert find_repetition(varied, 4, 4) is None


def test_detector_fires_while_streaming() -> None:
    detector = RepetitionDetector(RepetitionGuard(ngram=3, min_repeats=3))
    pieces = ["The", " end", " is", " near", "."] * 3
    fired = [detector.feed(p) for p in pieces]
    assert fired[-1] and not any(fired[:5])


@pytest.mark.parametrize("split", [1, 3, 7, 20])
def test_streaming_filter_catches_matches_split_across_chunks(split: int) -> None:
    text = "Write to jane.doe@example.com or call +1 415 555 0100 today, darn it."
    filt = StreamingFilter(OutputFilter(blocklist=["darn"], redact_pii=True, replacement="[x]"))
    pieces = [text[i : i + split] for i in range(0, len(text), split)]
    streamed = "".join(filt.feed(p) for p in pieces) + filt.flush()
    assert streamed == "Write to [x] or call [x] today, [x] it."
    assert filt.redactions == 3
    assert StreamingFilter(OutputFilter()).feed(text) == text  # no rules: passes through untouched


def test_prune_drops_oldest_turns_but_keeps_system_and_last() -> None:
    messages = [{"role": "system", "content": "s"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(6)
    ]

    async def count(msgs: list[dict]) -> int:
        return 10 * len(msgs)

    outcome = asyncio.run(prune_messages(messages, budget=40, n_ctx=100, count=count))
    assert outcome.action == "pruned" and outcome.dropped == 3
    assert [m["content"] for m in outcome.messages] == ["s", "m3", "m4", "m5"]


def test_prune_rejects_when_even_the_last_message_does_not_fit() -> None:
    from slmkit.serve.api_errors import ApiError

    async def count(msgs: list[dict]) -> int:
        return 1000

    with pytest.raises(ApiError) as err:
        asyncio.run(
            prune_messages([{"role": "user", "content": "x"}], budget=10, n_ctx=20, count=count)
        )
    assert err.value.code == "context_length_exceeded"


def test_cache_key_ignores_stream_but_not_sampling() -> None:
    def gen(**kw: object):
        body = ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}
        )
        return generation_request(body, "m", 16)

    assert gen(temperature=0).cache_key() == gen(temperature=0, stream=True).cache_key()
    assert gen(temperature=0).cache_key() != gen(temperature=0.5, seed=1).cache_key()
    assert gen(seed=3).deterministic and not gen(temperature=0.7).deterministic


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": "hi"},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
        {"model": "m", "messages": [{"role": "robot", "content": "hi"}]},
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "stop": ["a", "b", "c", "d", "e"],
        },
    ],
)
def test_wrong_types_are_rejected_strictly(body: dict) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate(body)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (
        50.0,
        95.0,
        99.0,
    )
    assert percentile([], 50) is None


def test_audit_log_hashes_keys_redacts_text_and_feeds_logs(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    log = AuditLog(AuditSettings(path=db, log_text=True))
    now = time.time()
    for i in range(30):
        status = 503 if i % 5 == 0 else 200
        log.record(
            AuditRecord(
                id=f"r{i}",
                ts=now - i,
                key_id=key_id("sk-secret"),
                model="m",
                endpoint="chat",
                status=status,
                completion_tokens=10,
                latency_s=0.1 * (i + 1),
                ttft_s=0.01,
                prompt_text="mail me at bob@example.org",
                response_text="call 555-123-4567 now",
            )
        )
    assert log.add_feedback("r1", -1, "better answer") and not log.add_feedback("nope", 1, None)
    log.close()
    conn = sqlite3.connect(db)
    row = conn.execute(
        "SELECT key_id, prompt_text, response_text FROM requests WHERE id='r1'"
    ).fetchone()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert row == (key_id("sk-secret"), "mail me at [email]", "call [phone] now")
    assert b"sk-secret" not in db.read_bytes()
    stats = window_stats(db, 3600)
    assert stats.requests == 30 and stats.errors == 6 and stats.completion_tokens == 240
    assert (
        stats.latency_p50 is not None
        and stats.latency_p50 <= stats.latency_p95 <= stats.latency_p99
    )
    alerts = check_alerts(db, ServeConfig().alerts)
    assert alerts and "20.0%" in alerts[0].message


def test_in_server_alert_fires_like_slm_logs_and_warns_once(capsys) -> None:
    from slmkit.serve.alerts import AlertWatcher
    from slmkit.serve.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    watcher = AlertWatcher(ServeConfig().alerts, metrics.alerts)
    for status in [200] * 17 + [400, 429, 503]:  # 2 of 20 failed (a 400 is the client's)
        watcher.record(status)
    assert [a.message for a in watcher.check()] == [
        "error rate 10.0% over the last 300 s (20 requests) exceeds 5.0%"
    ]
    watcher.check()
    assert capsys.readouterr().err.count("ALERT error-rate") == 1
    assert metrics.alerts.labels("error-rate")._value.get() == 1
    assert watcher.check(now=time.time() + 301) == []
    assert metrics.alerts.labels("error-rate")._value.get() == 0


def test_serve_refuses_clearly_before_starting(slm, tmp_path: Path) -> None:
    import socket

    no_model = slm("serve")
    assert no_model.returncode == 2 and "no model to serve" in no_model.stderr
    vllm = slm("serve", "default", "--engine", "vllm", "--port", "0")
    assert vllm.returncode == 2 and "vllm" in vllm.stderr.lower() and "Traceback" not in vllm.stderr
    bad = tmp_path / "serve.yaml"
    bad.write_text("limits:\n  max_queue: 8\n  max_qeue: 9\n")
    config = slm("serve", "default", "--config", str(bad))
    assert (
        config.returncode == 2 and "serve.yaml:3" in config.stderr and "max_qeue" in config.stderr
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = slm("serve", "default", "--port", str(port))
    assert taken.returncode == 2 and "cannot listen" in taken.stderr


def test_a_request_past_its_deadline_gets_408() -> None:
    from slmkit.serve.api_errors import ApiError
    from slmkit.serve.engines.base import Delta
    from slmkit.serve.generation import next_delta

    async def slow_engine():
        yield Delta(text="a")
        await asyncio.sleep(30)
        yield Delta(text="b")

    async def drive() -> list[str]:
        events = slow_engine()
        deadline = time.monotonic() + 0.2
        first = await next_delta(events, deadline, 0.2)
        with pytest.raises(ApiError) as err:
            await next_delta(events, deadline, 0.2)
        return [first.text if first else "", str(err.value.status), str(err.value.code)]

    assert asyncio.run(drive()) == ["a", "408", "request_timeout"]


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


@pytest.fixture
def vllm_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM cannot run here; only its availability check is bypassed, the command line is real."""
    from slmkit.serve.engines import vllm

    monkeypatch.setattr(vllm, "vllm_available", lambda: None)


def test_vllm_serves_a_lora_run_as_base_plus_adapter(
    tmp_path: Path, tiny_model_dir: Path, vllm_without_gpu: None
) -> None:
    from serve_helpers import write_adapter_run
    from slmkit.serve.engines.request import GenerationRequest
    from slmkit.serve.server import build_engines

    run = write_adapter_run(tiny_model_dir, tmp_path / "run", r=24)
    config = ServeConfig.model_validate(
        {
            "models": [
                {"id": "support", "ref": str(run), "engine": "vllm"},
                {"id": "plain", "ref": str(tiny_model_dir), "engine": "vllm"},
            ]
        }
    )
    engines = build_engines(config)
    try:
        lora, plain = engines["support"].command(), engines["plain"].command()
        ask = GenerationRequest("support", [{"role": "user", "content": "hi"}], None, 4, False)
        payload = engines["support"].upstream_payload(ask)  # type: ignore[attr-defined]
    finally:
        for engine in engines.values():
            asyncio.run(engine.stop())
    assert lora[lora.index("serve") + 1] == str(tiny_model_dir.resolve())  # the base weights
    assert "--enable-lora" in lora
    assert _flag(lora, "--lora-modules") == f"support={run.resolve() / 'adapter'}"
    assert _flag(lora, "--served-model-name") == "support--base"
    assert payload["model"] == "support"  # requests for the id go to the LoRA, not the bare base
    assert _flag(lora, "--max-lora-rank") == "32"  # rank 24 is above vLLM's default of 16
    assert "--enable-lora" not in plain and _flag(plain, "--served-model-name") == "plain"


@pytest.mark.parametrize(
    ("change", "named"),
    [({"use_dora": True}, "DoRA"), ({"modules_to_save": ["lm_head"]}, "modules_to_save")],
)
def test_vllm_refuses_an_adapter_it_cannot_load_in_one_line(
    tmp_path: Path, tiny_model_dir: Path, vllm_without_gpu: None, change: dict, named: str
) -> None:
    import json

    from serve_helpers import write_adapter_run
    from slmkit.errors import ServeError
    from slmkit.serve.server import build_engines

    run = write_adapter_run(tiny_model_dir, tmp_path / "run")
    adapter_config = run / "adapter" / "adapter_config.json"
    adapter_config.write_text(json.dumps({**json.loads(adapter_config.read_text()), **change}))
    config = ServeConfig.model_validate(
        {"models": [{"id": "support", "ref": str(run), "engine": "vllm"}]}
    )
    with pytest.raises(ServeError) as err:
        build_engines(config)
    assert named in str(err.value) and "slm merge" in str(err.value) and "\n" not in str(err.value)


def test_an_audit_file_from_before_routes_gains_the_new_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    old = sqlite3.connect(db)
    old.execute(
        "CREATE TABLE requests (id TEXT PRIMARY KEY, ts REAL NOT NULL, key_id TEXT, model TEXT, "
        "endpoint TEXT, status INTEGER, error_code TEXT, prompt_tokens INTEGER, "
        "completion_tokens INTEGER, latency_s REAL, ttft_s REAL, stream INTEGER, cached INTEGER, "
        "prompt_text TEXT, response_text TEXT)"
    )
    old.execute("INSERT INTO requests (id, ts, status) VALUES ('old-1', 1.0, 200)")
    old.commit()
    old.close()
    log = AuditLog(AuditSettings(path=db))
    log.record(AuditRecord("new-1", 2.0, None, "m", "chat", 200, route="support", replica="m#1"))
    log.flush()
    log.close()
    rows = (
        sqlite3.connect(db)
        .execute("SELECT id, route, replica FROM requests ORDER BY ts")
        .fetchall()
    )
    assert rows == [("old-1", None, None), ("new-1", "support", "m#1")]
