"""Schemathesis fuzzes every operation of the gateway's own OpenAPI schema (valid and invalid
inputs) against a real `slm serve default`: no request a client can send may produce a 5xx."""

from __future__ import annotations

import pytest

from serve_helpers import ServerProcess, import_or_skip, needs_llama_server

schemathesis = import_or_skip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

pytestmark = needs_llama_server

KEY = "sk-fuzz"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONFIG = {
    "llamacpp": {"ctx_size": 1024, "parallel": 2, "threads": 1},
    "limits": {"max_tokens_cap": 4, "request_timeout_s": 30, "max_queue": 8},
}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("serve-fuzz")
    with ServerProcess(
        ["default"], api_key=KEY, config=CONFIG, env={"SLM_HOME": str(home)}
    ) as server:
        yield schemathesis.openapi.from_url(server.base_url + "/openapi.json", headers=AUTH)


POSITIVE = GenerationMode.POSITIVE


def _served_model(case):
    """Valid requests name the served model, so they reach the engine (unknown ids are tested elsewhere)."""
    if isinstance(case.body, dict) and "model" in case.body and case.path != "/v1/embeddings":
        case.body["model"] = "default"
        for message in case.body.get("messages") or []:
            if message.get("content") is None and message.get("role") != "assistant":
                message["content"] = (
                    "hi"  # the schema allows null content; llama-server (rightly) does not
                )
    return case


def _same(case):
    return case


def _operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize(
    "mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value
)
def test_no_request_produces_a_server_error(api_schema, mode) -> None:
    operations = _operations(api_schema)
    fuzzed: set[str] = set()
    statuses: set[tuple[str, int]] = set()
    assert {op.path for op in operations} >= {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/feedback",
    }
    for operation in operations:

        @given(
            case=operation.as_strategy(generation_mode=mode).map(
                _served_model if mode == POSITIVE else _same
            )
        )
        @settings(
            max_examples=15,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate],
        )
        def check(case) -> None:
            fuzzed.add(case.path)
            response = case.call(headers=AUTH, timeout=60)
            statuses.add((case.path, response.status_code))
            assert response.status_code < 500, (
                f"{case.method} {case.path} {case.body!r} -> {response.status_code}: {response.text[:300]}"
            )
            if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        try:
            check()
        except Unsatisfiable:  # negative mode has nothing to break in an operation without inputs
            assert mode == GenerationMode.NEGATIVE
    assert {"/v1/chat/completions", "/v1/completions", "/v1/feedback", "/v1/embeddings"} <= fuzzed
    if mode == GenerationMode.POSITIVE:  # valid requests really reached the engine
        assert ("/v1/chat/completions", 200) in statuses and ("/v1/completions", 200) in statuses
    else:
        assert ("/v1/chat/completions", 400) in statuses
