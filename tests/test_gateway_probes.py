"""What an orchestrator and a Prometheus scrape meet, in process (FastAPI's TestClient over the real
`Gateway`, scripted engines): `/live` answers while the process serves HTTP, `/ready` only while
every engine is ready, both without a key; the scrape token opens `/metrics` and nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from serve_helpers import ScriptedEngine
from slmkit.errors import ConfigError

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
APP_KEY, SCRAPE_TOKEN = "sk-probe-app", "tok-probe-scrape"
KEYS = {"keys": [{"name": "app", "key_env": "PROBE_APP_KEY"}]}


class LoadingEngine(ScriptedEngine):
    """An engine still loading its model (or restarting after a crash): not ready."""

    def __init__(self, model_id: str = "slow") -> None:
        super().__init__(model_id)
        self.state = "starting"


@contextmanager
def gateway_client(tmp_path: Path, engines: dict[str, Any], **config: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from slmkit.serve.app import create_app
    from slmkit.serve.config import ServeConfig
    from slmkit.serve.gateway import Gateway

    settings = ServeConfig.model_validate({"audit": {"path": str(tmp_path / "audit.db")}, **config})
    with TestClient(create_app(Gateway(settings, engines)), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBE_APP_KEY", APP_KEY)
    monkeypatch.setenv("PROBE_SCRAPE_TOKEN", SCRAPE_TOKEN)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_live_and_ready_answer_200_without_a_key_when_every_engine_is_ready(
    tmp_path: Path, secrets: None
) -> None:
    with gateway_client(tmp_path, {"m": ScriptedEngine()}, **KEYS) as client:
        assert client.get("/v1/models").status_code == 401  # the gateway does ask for keys
        live, ready = client.get("/live"), client.get("/ready")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"
    assert [e["state"] for e in ready.json()["engines"]] == ["ready"]


def test_an_engine_not_ready_makes_ready_503_while_live_stays_200(
    tmp_path: Path, secrets: None
) -> None:
    engines = {"m": ScriptedEngine(), "slow": LoadingEngine()}
    with gateway_client(tmp_path, engines, **KEYS) as client:
        live, ready, health = client.get("/live"), client.get("/ready"), client.get("/health")
        engines["slow"].state = "ready"  # the model loaded: back in the Service
        ready_again = client.get("/ready")
    assert live.status_code == 200  # a liveness probe on /live does not kill a loading pod
    assert ready.status_code == 503
    # the body is /health's report: which engine is not ready, and why the pod is held back
    assert ready.json() == health.json()
    assert ready.json()["status"] == "degraded"
    states = {e["id"]: e["state"] for e in ready.json()["engines"]}
    assert states == {"m": "ready", "slow": "starting"}
    assert ready_again.status_code == 200


def test_the_scrape_token_opens_metrics_and_nothing_else(tmp_path: Path, secrets: None) -> None:
    config = {**KEYS, "metrics_token_env": "PROBE_SCRAPE_TOKEN"}
    with gateway_client(tmp_path, {"m": ScriptedEngine()}, **config) as client:
        scraped = client.get("/metrics", headers=bearer(SCRAPE_TOKEN))
        chat = client.post("/v1/chat/completions", json=CHAT, headers=bearer(SCRAPE_TOKEN))
        models = client.get("/v1/models", headers=bearer(SCRAPE_TOKEN))
        anonymous = client.get("/metrics")
        wrong = client.get("/metrics", headers=bearer(SCRAPE_TOKEN + "x"))
        with_key = client.get("/metrics", headers=bearer(APP_KEY))
        chat_with_key = client.post("/v1/chat/completions", json=CHAT, headers=bearer(APP_KEY))
    assert scraped.status_code == 200
    assert "slm_requests_total" in scraped.text
    for refused in (chat, models, anonymous, wrong):
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "invalid_api_key"
    assert with_key.status_code == 200  # API keys still open /metrics too
    assert chat_with_key.status_code == 200
    assert chat_with_key.json()["choices"][0]["message"]["content"] == "Hello there"


def test_a_named_scrape_token_that_is_not_set_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slmkit.serve.app import create_app
    from slmkit.serve.config import ServeConfig
    from slmkit.serve.gateway import Gateway

    monkeypatch.setenv("PROBE_APP_KEY", APP_KEY)
    monkeypatch.delenv("PROBE_SCRAPE_TOKEN", raising=False)
    settings = ServeConfig.model_validate(
        {
            **KEYS,
            "metrics_token_env": "PROBE_SCRAPE_TOKEN",
            "audit": {"path": str(tmp_path / "audit.db")},
        }
    )
    with pytest.raises(ConfigError, match="metrics_token_env: environment variable "):
        create_app(Gateway(settings, {"m": ScriptedEngine()}))


def test_metrics_token_env_must_name_an_environment_variable() -> None:
    from pydantic import ValidationError

    from slmkit.serve.config import ServeConfig

    with pytest.raises(ValidationError, match="metrics_token_env must be an environment variable"):
        ServeConfig.model_validate({"metrics_token_env": "not a name"})
