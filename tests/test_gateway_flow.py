"""One request's way through the gateway, in process (FastAPI's TestClient over the real `Gateway`,
scripted engines that fail at a chosen word): an engine's error kinds become the API's statuses
in one place, before and after a stream's first byte, on every path that asks an engine."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from serve_helpers import ScriptedEngine
from slmkit.serve.engines.errors import KINDS, EngineError, engine_unavailable, invalid_request

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}

# What a client sees for each kind: status, error code, Retry-After (written out, not read from
# the gateway's table, so that a changed mapping fails here).
ANSWERS = {
    "bad_request": (400, None, None),
    "context_length": (400, "context_length_exceeded", None),
    "unavailable": (503, "engine_unavailable", "2"),
    "failed": (503, "engine_error", None),
    "rate_limited": (429, "rate_limit_exceeded", "2"),
    "upstream_error": (502, "upstream_error", None),
    "upstream_unavailable": (503, "upstream_unavailable", "2"),
    "upstream_timeout": (504, "upstream_timeout", None),
}


@contextmanager
def gateway_client(tmp_path: Path, engines: dict[str, Any], **config: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from slmkit.serve.app import create_app
    from slmkit.serve.config import ServeConfig
    from slmkit.serve.gateway import Gateway

    settings = ServeConfig.model_validate({"audit": {"path": str(tmp_path / "audit.db")}, **config})
    with TestClient(create_app(Gateway(settings, engines)), raise_server_exceptions=False) as c:
        yield c


def audit_rows(tmp_path: Path) -> list[tuple[int, str | None]]:
    with sqlite3.connect(tmp_path / "audit.db") as conn:
        return conn.execute("SELECT status, error_code FROM requests ORDER BY rowid").fetchall()


def test_every_engine_error_kind_has_an_answer() -> None:
    assert set(ANSWERS) == set(KINDS)
    with pytest.raises(ValueError, match="unknown engine error kind 'oops'"):
        EngineError("oops", "x")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_an_engine_error_kind_reaches_the_client_with_its_status(tmp_path: Path, kind: str) -> None:
    status, code, retry_after = ANSWERS[kind]
    error = EngineError(kind, f"the engine says {kind}")  # type: ignore[arg-type]
    with gateway_client(tmp_path, {"m": ScriptedEngine(fail_at=0, error=error)}) as client:
        response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert (body["code"], body["message"]) == (code, f"the engine says {kind}")
    assert response.headers.get("retry-after") == retry_after
    assert audit_rows(tmp_path) == [(status, code)]


def test_a_stream_that_breaks_after_its_first_word_ends_with_an_error_event(
    tmp_path: Path,
) -> None:
    engine = ScriptedEngine(
        words=("one", " two", " three"), fail_at=2, error=engine_unavailable("m")
    )
    with gateway_client(tmp_path, {"m": engine}) as client:
        response = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200  # the headers went out with the first word
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    said = "".join(
        c["delta"].get("content") or ""
        for e in events[:-1]
        if e != "[DONE]"
        for c in json.loads(e)["choices"]
    )
    assert said == "one two"
    assert json.loads(events[-1])["error"]["code"] == "engine_unavailable"
    assert audit_rows(tmp_path) == [(503, "engine_unavailable")]


def test_a_requests_own_fault_part_way_is_not_asked_again_on_another_replica(
    tmp_path: Path,
) -> None:
    from slmkit.serve.engines.replicas import ReplicaPool

    refusing = ScriptedEngine(fail_at=1, error=invalid_request("bad schema", code="bad_schema"))
    other = ScriptedEngine()
    pool = ReplicaPool("m", [("r0", refusing), ("r1", other)], strategy="round-robin")
    with gateway_client(tmp_path, {"m": pool}) as client:
        response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_schema"
    assert (refusing.calls, other.calls) == (1, 0)


class Uncountable(ScriptedEngine):
    async def count_prompt_tokens(self, request: Any) -> int | None:
        raise engine_unavailable("m", "the child died while counting")


def test_an_engine_error_while_counting_the_prompt_is_answered_as_the_engines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a key with a token limit has the prompt counted by the engine before anything is generated
    monkeypatch.setenv("TEAM_KEY", "sk-team")
    keys = [{"name": "team", "key_env": "TEAM_KEY", "tpm": 1000}]
    with gateway_client(tmp_path, {"m": Uncountable()}, keys=keys) as client:
        response = client.post(
            "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-team"}
        )
    assert response.status_code == 503, response.text
    assert "the child died while counting" in response.json()["error"]["message"]
