"""The audit log and feedback on both backends of shared state: a SQLite file and a real
PostgreSQL server (tests/state_servers.py). The same stories run on each; the last ones are the
promise of a shared database: a second gateway accepts feedback for the first one's answers."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from serve_helpers import ScriptedEngine
from slmkit.errors import ConfigError
from slmkit.feedback.audit_reader import read_rows
from slmkit.feedback.export import export_feedback
from slmkit.serve.ab_report import ab_report
from slmkit.serve.audit import BATCH, AuditLog, AuditRecord
from slmkit.serve.audit_schema import MIGRATIONS, open_for_writing
from slmkit.serve.config import AuditSettings, ServeConfig
from slmkit.serve.logs import feedback_rows, key_stats, recent_requests, window_stats
from slmkit.state.migrations import migrate
from slmkit.state.sql import StateError, open_database, query
from state_servers import free_port

NOW = time.time()


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where the audit log lives: a SQLite file, or a fresh database of the PostgreSQL server."""
    if request.param == "sqlite":
        return tmp_path / "audit.db"
    return str(request.getfixturevalue("postgres_url"))


def _record(i: int, **more: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "id": f"chatcmpl-{i}", "ts": NOW - 60 + i * 0.01, "key_id": "key-a" if i % 2 else "key-b",
        "model": "small", "endpoint": "chat", "status": 200, "prompt_tokens": 3,
        "completion_tokens": 5, "latency_s": 0.2, "stream": bool(i % 3 == 0),
        **more,
    }  # fmt: skip
    return AuditRecord(**fields)


def _log(target: Path | str, **settings: Any) -> AuditLog:
    return AuditLog(AuditSettings(**settings), database=target)


def test_migrations_run_once_and_a_second_run_changes_nothing(target: Path | str) -> None:
    db = open_database(target)
    try:
        assert migrate(db, "audit", MIGRATIONS) == [1]
        assert migrate(db, "audit", MIGRATIONS) == []
        recorded = query(db, "SELECT component, version FROM schema_migrations")
        assert recorded == [{"component": "audit", "version": 1}]
        assert {"id", "ts", "version", "source", "prompt_messages"} <= db.columns("requests")
        assert {"request_id", "rating", "tags"} <= db.columns("feedback")
    finally:
        db.close()
    open_for_writing(target).close()  # what a gateway does on every start: nothing left to do


def test_gateways_that_start_together_apply_each_migration_once(target: Path | str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def start(_: int) -> list[int]:
        db = open_database(target)
        try:
            return migrate(db, "audit", MIGRATIONS)
        finally:
            db.close()

    with ThreadPoolExecutor(4) as pool:
        applied = list(pool.map(start, range(4)))
    assert sorted(applied) == [[], [], [], [1]]


def test_rows_written_in_batches_are_read_back_by_every_reader(target: Path | str) -> None:
    count = 3 * BATCH + 17  # several of the writer's transactions
    log = _log(target, log_text=True)
    try:
        for i in range(count):
            log.record(_record(i, prompt_text=f"mail user{i}@example.com", response_text="Sure."))
        log.record(_record(0, status=500))  # the same id again: the later row replaces it
        log.flush()
        assert log.add_feedback("chatcmpl-5", 1, None, ["helpful"])
        assert log.add_feedback("chatcmpl-7", -1, "Write to help@example.com.")
        assert log.add_feedback("chatcmpl-7", 1, None)  # the latest rating counts
    finally:
        log.close()
    recent = recent_requests(target, 3)
    assert [r["id"] for r in recent] == [f"chatcmpl-{i}" for i in (count - 1, count - 2, count - 3)]
    assert "@" not in recent[0]["prompt_text"] and "[email]" in recent[0]["prompt_text"]
    stats = window_stats(target, 300, now=NOW)
    assert (stats.requests, stats.errors) == (count, 1)
    assert stats.completion_tokens == 5 * (count - 1) and stats.latency_p50 == pytest.approx(0.2)
    keys = {k.key: (k.requests, k.tokens) for k in key_stats(target, 300, now=NOW)}
    assert keys == {"key-a": (count // 2, 8 * (count // 2)), "key-b": (count - count // 2, 8 * (count - count // 2))}  # fmt: skip
    rated = {r.id: (r.rating, r.correction, r.tags) for r in read_rows(target) if r.rating}
    assert rated == {
        "chatcmpl-5": (1, None, ["helpful"]),
        "chatcmpl-7": (1, None, []),
    }
    assert [r["request_id"] for r in feedback_rows(target)] == ["chatcmpl-7", "chatcmpl-7", "chatcmpl-5"]  # fmt: skip
    assert feedback_rows(target)[1]["correction"] == "Write to [email]."


def test_feedback_is_refused_for_an_id_never_logged(target: Path | str) -> None:
    log = _log(target)
    try:
        log.record(_record(1))
        assert log.add_feedback("chatcmpl-1", 1, None)  # still queued or written: both count
        assert not log.add_feedback("chatcmpl-404", 1, None)
    finally:
        log.close()
    assert [r["request_id"] for r in feedback_rows(target)] == ["chatcmpl-1"]


def test_a_row_the_database_refuses_costs_only_itself(target: Path | str) -> None:
    problems: list[str] = []
    log = AuditLog(AuditSettings(), problems.append, database=target)
    try:
        batch: list[Any] = [(_record(i), Future()) for i in range(4)]
        batch[2][0].error_code = {"not": "bindable"}
        log._write(batch)  # one batch, as the writer thread hands it over
    finally:
        log.close()
    done = [written.exception() is None for _, written in batch]
    assert done == [True, True, False, True]  # each row's caller hears how its row went
    assert sorted(r["id"] for r in recent_requests(target, 10)) == [
        "chatcmpl-0",
        "chatcmpl-1",
        "chatcmpl-3",
    ]
    assert problems == ["write_error"]


def test_feedback_export_ab_report_and_cost_profile_read_the_same_log(
    target: Path | str, tmp_path: Path
) -> None:
    from slmkit.cost.profile import audit_profile

    log = _log(target, log_text=True)
    try:
        for i in range(8):
            arm = "v1" if i % 2 else "v2"
            log.record(_record(i, version=arm, prompt_text="user: Hi?", response_text=f"Hello {i}"))
        log.flush()
        for i in range(8):
            assert log.add_feedback(f"chatcmpl-{i}", 1 if i % 2 else -1, None)
    finally:
        log.close()
    report = export_feedback(target, "sft", tmp_path / "sft.jsonl")
    assert report.exported == 4  # the thumbs-up answers
    lines = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert {row["messages"][-1]["content"] for row in lines} == {f"Hello {i}" for i in (1, 3, 5, 7)}
    ab = ab_report(target, "small", order=["v1", "v2"])
    assert [(v.version, v.requests, v.rated, v.thumbs_up) for v in ab.versions] == [
        ("v1", 4, 4, 4),
        ("v2", 4, 4, 0),
    ]
    profile = audit_profile(target, 1, now=NOW)
    assert profile.requests == 8 and profile.prompt_tokens == 3


def test_a_second_gateway_accepts_feedback_for_the_first_ones_answer(target: Path | str) -> None:
    """Two gateways on one database (one PostgreSQL, or one SQLite file on one machine): a
    user's feedback may reach the gateway that did not answer, and is kept."""
    first, second = _log(target), _log(target)
    try:
        first.record(_record(1))
        first.flush()  # written: the second gateway never had it in its queue
        assert second.add_feedback("chatcmpl-1", -1, "Better answer.")
        assert not second.add_feedback("chatcmpl-2", 1, None)
    finally:
        first.close()
        second.close()
    assert [(r.id, r.rating, r.correction) for r in read_rows(target) if r.rating] == [
        ("chatcmpl-1", -1, "Better answer.")
    ]


def test_the_gateway_logs_a_completion_and_takes_feedback_for_it(
    target: Path | str, tmp_path: Path
) -> None:
    """End to end in process: serve.yaml's `state.database` (or the SQLite default), a chat
    completion, then `POST /v1/feedback` for its id, and the rating in the export reader."""
    from fastapi.testclient import TestClient

    from slmkit.serve.app import create_app
    from slmkit.serve.gateway import Gateway

    state = {"database": target} if isinstance(target, str) else {}
    config = ServeConfig.model_validate({"audit": {"path": str(tmp_path / "audit.db")}, "state": state})  # fmt: skip
    assert config.audit_target() == target
    with TestClient(create_app(Gateway(config, {"small": ScriptedEngine("small")}))) as client:
        answer = client.post(
            "/v1/chat/completions",
            json={"model": "small", "messages": [{"role": "user", "content": "Hi"}]},
        )
        assert answer.status_code == 200, answer.text
        completion = answer.json()["id"]
        sent = client.post("/v1/feedback", json={"id": completion, "rating": 1})
        assert sent.status_code == 200, sent.text
        unknown = client.post("/v1/feedback", json={"id": "chatcmpl-nope", "rating": 1})
        assert unknown.status_code == 404
    assert [(r.id, r.rating) for r in read_rows(target)] == [(completion, 1)]


def test_a_server_that_cannot_be_reached_is_one_line_without_the_password() -> None:
    pytest.importorskip("psycopg", reason="pip install 'slmkit[shared]'")
    port = free_port()  # nothing listens there
    with pytest.raises(StateError) as caught:
        open_database(f"postgresql://slm:s3cret@127.0.0.1:{port}/audit")
    message = str(caught.value)
    assert message.startswith(f"state.database: cannot connect to PostgreSQL at 127.0.0.1:{port}: ")
    assert "\n" not in message and "s3cret" not in message


def test_a_postgres_url_without_the_driver_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "psycopg", None)  # as if not installed
    with pytest.raises(StateError) as caught:
        open_database("postgresql://slm@127.0.0.1:5432/audit")
    assert str(caught.value) == (
        "state.database: a PostgreSQL URL needs the psycopg driver; "
        "install it with pip install 'slmkit[shared]'"
    )


@pytest.mark.parametrize(
    ("state", "error"),
    [
        ({"database": "mysql://db/audit"}, "state.database: must be a postgresql:// or postgres:// URL (got mysql://)"),
        ({"database": "postgresql://db:port/audit"}, "state.database: not a valid URL"),
        ({"database": "postgresql://db/a", "database_env": "DB_URL"}, "state: give either `database` or `database_env`, not both"),
        ({"database_env": "not a name"}, "state.database_env: database_env must be an environment variable name"),
        ({"cache": "http://cache:6379"}, "state.cache: must be a redis:// or rediss:// or valkey:// or valkeys:// URL (got http://)"),
        ({"cahce": "redis://x"}, "state.cahce: unknown key"),
    ],
)  # fmt: skip
def test_a_bad_state_section_is_one_line_naming_the_field(
    tmp_path: Path, state: dict[str, str], error: str
) -> None:
    from slmkit.config import load_config

    path = tmp_path / "serve.yaml"
    path.write_text("port: 8000\nstate:\n" + "".join(f"  {k}: {v}\n" for k, v in state.items()))
    with pytest.raises(ConfigError) as caught:
        load_config(path, ServeConfig)
    assert str(caught.value).startswith(f"{path}:") and error in str(caught.value)


def test_the_url_comes_from_database_env_and_an_unset_one_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = ServeConfig.model_validate({"state": {"database_env": "SLM_TEST_DB_URL"}})
    monkeypatch.delenv("SLM_TEST_DB_URL", raising=False)
    with pytest.raises(ConfigError, match="state.database_env: environment variable SLM_TEST_DB_URL is not set"):  # fmt: skip
        config.audit_target()
    monkeypatch.setenv("SLM_TEST_DB_URL", "postgresql://slm:pw@db:5432/audit")
    assert config.audit_target() == "postgresql://slm:pw@db:5432/audit"
    monkeypatch.setenv("SLM_TEST_DB_URL", "sqlite:///audit.db")
    with pytest.raises(ConfigError, match="state.database_env: SLM_TEST_DB_URL: must be a postgresql"):  # fmt: skip
        config.audit_target()


def test_slm_logs_and_feedback_export_follow_the_serve_configs_database(
    target: Path | str, tmp_path: Path, slm: Any
) -> None:
    log = _log(target, log_text=True)
    try:
        # now, not at import: `slm logs` counts the last 300 s, and a suite may run longer
        log.record(_record(1, ts=time.time(), prompt_text="user: Hi?", response_text="Hello."))
        log.flush()
        assert log.add_feedback("chatcmpl-1", 1, None)
    finally:
        log.close()
    serve_yaml = tmp_path / "serve.yaml"
    where = f"state:\n  database: {target}\n" if isinstance(target, str) else f"audit:\n  path: {target}\n"  # fmt: skip
    serve_yaml.write_text(where)
    logs = slm("logs", "requests", "--config", str(serve_yaml), "--json")
    assert logs.returncode == 0, logs.stderr
    assert json.loads(logs.stdout)["requests"] == 1
    out = tmp_path / "sft.jsonl"
    export = slm("feedback", "export", "-c", str(serve_yaml), "--since", "1d", "--to", "sft", "-o", str(out))  # fmt: skip
    assert export.returncode == 0, export.stderr
    assert json.loads(out.read_text())["messages"][-1]["content"] == "Hello."
    direct = slm("logs", "feedback", "--db", str(target))
    assert direct.returncode == 0, direct.stderr
    assert "chatcmpl-1" in direct.stdout


def test_slm_logs_on_a_server_that_is_down_is_one_line(slm: Any) -> None:
    pytest.importorskip("psycopg", reason="pip install 'slmkit[shared]'")
    port = free_port()
    result = slm("logs", "--db", f"postgresql://slm:s3cret@127.0.0.1:{port}/audit")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: state.database: cannot connect to PostgreSQL at 127.0.0.1:{port}: "
        + result.stderr.split(f"127.0.0.1:{port}: ", 1)[1].strip()
    ]
    assert "s3cret" not in result.stderr


def test_while_the_database_is_down_answers_go_on_and_feedback_is_503(tmp_path: Path) -> None:
    """A PostgreSQL that stops under a running gateway: completions are still answered (their
    rows are counted as not written), feedback is refused with 503 `state_unavailable` (it is
    never answered `stored` when it was not)."""
    from fastapi.testclient import TestClient

    from slmkit.serve.app import create_app
    from slmkit.serve.gateway import Gateway
    from state_servers import postgres_started

    with postgres_started() as server:
        url = server.create_database()
        config = ServeConfig.model_validate({"state": {"database": url}})
        chat = {"model": "small", "messages": [{"role": "user", "content": "Hi"}]}
        with TestClient(create_app(Gateway(config, {"small": ScriptedEngine("small")}))) as client:
            first = client.post("/v1/chat/completions", json=chat).json()["id"]
            server.proc.send_signal(signal.SIGINT)  # fast shutdown: clients are cut off
            server.proc.wait(timeout=30)
            answered = client.post("/v1/chat/completions", json=chat)
            refused = client.post("/v1/feedback", json={"id": first, "rating": 1})
            assert answered.status_code == 200, answered.text
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "state_unavailable"
            assert refused.headers["Retry-After"] == "2"
            counted = 'slm_audit_problems_total{kind="write_error"} 0.0'  # until one is counted
            deadline = time.monotonic() + 60  # the writer gives up on a connection after 10 s
            while counted in client.get("/metrics").text:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert 'slm_audit_problems_total{kind="write_error"}' in client.get("/metrics").text


def test_a_streamed_answer_sends_its_done_only_once_its_row_is_committed(
    postgres_url: str,
) -> None:
    """The database stalls (its table locked) while a stream answers: the answer's words go out,
    its `[DONE]` waits for the row, and comes once the row is in. A client that got `[DONE]` has
    an audit row, whatever happens to the gateway afterwards."""
    import threading

    import psycopg
    from fastapi.testclient import TestClient

    from slmkit.serve.app import create_app
    from slmkit.serve.gateway import Gateway

    config = ServeConfig.model_validate({"state": {"database": postgres_url}})
    body = {"model": "small", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    lines: list[tuple[float, str]] = []
    with TestClient(create_app(Gateway(config, {"small": ScriptedEngine("small")}))) as client:
        client.post("/v1/chat/completions", json={**body, "stream": False})  # tables exist

        def read() -> None:
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                for line in response.iter_lines():
                    if line:
                        lines.append((time.monotonic(), line))

        with psycopg.connect(postgres_url) as conn:
            conn.execute("LOCK TABLE requests IN SHARE ROW EXCLUSIVE MODE")
            reader = threading.Thread(target=read)
            reader.start()
            time.sleep(1.5)
            seen_while_locked = [text for _, text in lines]
            released = time.monotonic()
        reader.join(timeout=30)
    assert any("Hello" in text for text in seen_while_locked)  # the words went out
    assert "data: [DONE]" not in seen_while_locked  # the end waited for the row
    done_at = next(at for at, text in lines if text == "data: [DONE]")
    assert done_at >= released
    rows = query_rows(postgres_url)
    assert len(rows) == 2 and all(status == 200 for status in rows)


def query_rows(url: str) -> list[int]:
    import psycopg

    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT status FROM requests")]
