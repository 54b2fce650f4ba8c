"""Gateway state that must not go stale or leak, and failover that retries, driven in process
(FastAPI's TestClient, engines that answer from memory): the response cache follows an alias to
its new version; an unexpected error gives back a key's reserved tokens; a non-streamed answer cut
by a dying replica is asked again on another."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from serve_helpers import MemoryEngine
from slmkit.serve.engines.base import Delta
from slmkit.serve.engines.request import GenerationRequest


class MovingAlias(MemoryEngine):
    """An alias-like engine (kind "alias"): answers with the version it serves, which a test moves
    as `slm models promote` would."""

    kind = "alias"

    def __init__(self, model_id: str, version: str) -> None:
        super().__init__(model_id, capacity=4)
        self.version = version

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        self.calls += 1
        request.version = self.version
        yield Delta(text=f"answered by {self.version}")
        yield Delta(finish_reason="stop")


def _ask(client: Any) -> tuple[str, str]:
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "support",
            "messages": [{"role": "user", "content": "Hi"}],
            "temperature": 0,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"], response.headers["x-slm-cache"]


def test_a_cached_answer_is_not_served_after_the_alias_moves(tmp_path: Any) -> None:
    from fastapi.testclient import TestClient

    from slmkit.serve.app import create_app
    from slmkit.serve.config import ServeConfig
    from slmkit.serve.gateway import Gateway

    engine = MovingAlias("support", "v1")
    config = ServeConfig.model_validate(
        {"cache": {"enabled": True}, "audit": {"path": str(tmp_path / "audit.db")}}
    )
    with TestClient(create_app(Gateway(config, {"support": engine}))) as client:
        assert _ask(client) == ("answered by v1", "miss")
        assert _ask(client) == ("answered by v1", "hit")
        engine.version = "v2"  # promoted
        assert _ask(client) == ("answered by v2", "miss")
        assert _ask(client) == ("answered by v2", "hit")
        engine.version = "v1"  # rolled back: v1's answers are v1's again
        assert _ask(client) == ("answered by v1", "hit")
    assert engine.calls == 2


class Broken(MovingAlias):
    """Counts its prompts (so a key's token limit reserves them) and fails with a plain bug."""

    kind = "fake"

    async def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        return 100

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        self.calls += 1
        raise RuntimeError("a bug, not an ApiError")
        yield Delta()  # pragma: no cover


def test_an_unexpected_error_releases_the_keys_tokens_and_is_audited(
    tmp_path: Any, monkeypatch: Any
) -> None:
    import sqlite3

    from fastapi.testclient import TestClient

    from slmkit.serve.app import create_app
    from slmkit.serve.config import ServeConfig
    from slmkit.serve.gateway import Gateway

    monkeypatch.setenv("TEAM_A_KEY", "sk-team-a")
    audit = tmp_path / "audit.db"
    config = ServeConfig.model_validate(
        {
            "keys": [{"name": "team-a", "key_env": "TEAM_A_KEY", "tpm": 1000}],
            "audit": {"path": str(audit)},
        }
    )
    gateway = Gateway(config, {"support": Broken("support", "v1")})
    body = {"model": "support", "messages": [{"role": "user", "content": "Hi"}]}
    with TestClient(create_app(gateway), raise_server_exceptions=False) as client:
        headers = {"Authorization": "Bearer sk-team-a"}
        for _ in range(3):
            response = client.post("/v1/chat/completions", json=body, headers=headers)
            assert response.status_code == 500, response.text
            assert response.json()["error"]["code"] == "internal_error"
            assert gateway.key_limits.states["team-a"].reserved == 0
    with sqlite3.connect(audit) as conn:
        rows = conn.execute("SELECT status, error_code FROM requests").fetchall()
    assert rows == [(500, "internal_error")] * 3


class Answering(MovingAlias):
    """A replica that says its name, or (`dies`) says one word and then fails as a killed one."""

    kind = "fake"

    def __init__(self, name: str, dies: bool = False) -> None:
        super().__init__("support", name)
        self.dies = dies

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        from slmkit.serve.engines.errors import engine_unavailable

        self.calls += 1
        yield Delta(text=f"{self.version} ")
        if self.dies:
            raise engine_unavailable("support", "the replica's process died")
        yield Delta(text="answers", finish_reason="stop")


def test_a_non_streamed_answer_cut_by_a_dying_replica_is_asked_again_elsewhere(
    tmp_path: Any,
) -> None:
    from fastapi.testclient import TestClient

    from slmkit.serve.app import create_app
    from slmkit.serve.config import ServeConfig
    from slmkit.serve.engines.replicas import ReplicaPool
    from slmkit.serve.gateway import Gateway

    dying, healthy = Answering("r0", dies=True), Answering("r1")
    pool = ReplicaPool("support", [("r0", dying), ("r1", healthy)], strategy="round-robin")
    config = ServeConfig.model_validate({"audit": {"path": str(tmp_path / "audit.db")}})
    body = {"model": "support", "messages": [{"role": "user", "content": "Hi"}]}
    with TestClient(create_app(Gateway(config, {"support": pool}))) as client:
        texts = []
        for _ in range(4):
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            texts.append(response.json()["choices"][0]["message"]["content"])
        metrics = client.get("/metrics").text
    assert texts == ["r1 answers"] * 4  # never r0's half answer glued to r1's
    failovers = f'slm_failovers_total{{model="support"}} {float(dying.calls)}'
    assert dying.calls >= 1 and failovers in metrics, metrics


class Member(MovingAlias):
    """A route's chain member: waits `delay_s`, then says `text`; records who else was admitted."""

    kind = "fake"

    def __init__(self, model_id: str, text: str, *, replica: str, delay_s: float = 0.0) -> None:
        super().__init__(model_id, f"{model_id}-v1")
        self.text, self.replica, self.delay_s = text, replica, delay_s
        self.admitted_meanwhile: dict[str, int] = {}
        self.gateway: Any = None

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        import asyncio

        self.calls += 1
        if self.gateway is not None:
            self.admitted_meanwhile = dict(self.gateway.admission.in_flight)
        await asyncio.sleep(self.delay_s)
        request.replica = self.replica
        if self.model_ids[0] == "small":  # the first member is an A/B arm: it names its version
            request.version = self.version
        yield Delta(text=self.text, finish_reason="stop")


def _route_gateway(tmp_path: Any, small: Member, big: Member, timeout_s: float = 60.0) -> Any:
    from slmkit.serve.config import ServeConfig
    from slmkit.serve.gateway import Gateway

    config = ServeConfig.model_validate(
        {
            "models": [{"id": "small", "ref": "default"}, {"id": "big", "ref": "default"}],
            "routes": [
                {"id": "support", "chain": ["small", "big"], "escalate": {"refusal": ["cannot"]}}
            ],
            "limits": {"request_timeout_s": timeout_s},
            "audit": {"path": str(tmp_path / "audit.db")},
        }
    )
    gateway = Gateway(config, {"small": small, "big": big})
    small.gateway = big.gateway = gateway
    return gateway


def test_an_escalated_request_gives_back_the_first_slot_and_audits_its_replica(
    tmp_path: Any,
) -> None:
    import sqlite3

    from fastapi.testclient import TestClient

    from slmkit.serve.app import create_app

    small = Member("small", "Sorry, I cannot help with that.", replica="small-0")
    big = Member("big", "The return window is 41 days.", replica="big-0")
    gateway = _route_gateway(tmp_path, small, big)
    body = {"model": "support", "messages": [{"role": "user", "content": "Returns?"}]}
    with TestClient(create_app(gateway)) as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-slm-route-reason"] == "escalated:refusal"
    assert big.admitted_meanwhile == {"small": 0, "big": 1}  # small's slot was given back
    with sqlite3.connect(tmp_path / "audit.db") as conn:
        row = conn.execute("SELECT served_by, version, replica FROM requests").fetchone()
    # the replica is the answering member's; the version is the one whose answer escalated
    # (the A/B report counts escalations per version)
    assert row == ("big", "small-v1", "big-0")


def test_the_chain_shares_the_requests_deadline(tmp_path: Any) -> None:
    """Two members of 0.7 s each under a 1 s timeout: the request times out (408) instead of
    each member getting a whole timeout of its own."""
    from fastapi.testclient import TestClient

    from slmkit.serve.app import create_app

    small = Member("small", "I cannot say.", replica="small-0", delay_s=0.7)
    big = Member("big", "Late answer.", replica="big-0", delay_s=0.7)
    gateway = _route_gateway(tmp_path, small, big, timeout_s=1.0)
    body = {"model": "support", "messages": [{"role": "user", "content": "Returns?"}]}
    with TestClient(create_app(gateway)) as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 408, response.text


def test_the_monitors_probes_are_audited_apart_from_users_requests(tmp_path: Any) -> None:
    """A request tagged `X-SLM-Source: monitor` (what `slm monitor` sends) is in the audit log
    with source "monitor", but not in the alert window, the A/B counter and report, or the
    traffic statistics."""
    import sqlite3

    from fastapi.testclient import TestClient

    from slmkit.serve.ab_report import ab_report
    from slmkit.serve.app import create_app
    from slmkit.serve.config import ServeConfig
    from slmkit.serve.engines.ab import ABEngine, Arm
    from slmkit.serve.gateway import Gateway
    from slmkit.serve.logs import window_stats

    audit = tmp_path / "audit.db"
    split = ABEngine(
        "support",
        [
            Arm("v1", 1.0, MovingAlias("support", "v1")),
            Arm("v2", 1.0, MovingAlias("support", "v2")),
        ],  # type: ignore[arg-type]
    )
    config = ServeConfig.model_validate({"audit": {"path": str(audit)}})
    gateway = Gateway(config, {"support": split})
    body = {"model": "support", "messages": [{"role": "user", "content": "Hi"}], "user": "u1"}
    with TestClient(create_app(gateway)) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        for _ in range(3):
            probe = client.post(
                "/v1/chat/completions", json=body, headers={"X-SLM-Source": "monitor"}
            )
            assert probe.status_code == 200
        metrics = client.get("/metrics").text
        recorded = len(gateway.alerts._recent)
    with sqlite3.connect(audit) as conn:
        sources = conn.execute("SELECT source FROM requests ORDER BY ts").fetchall()
    assert sources == [(None,), ("monitor",), ("monitor",), ("monitor",)]
    assert recorded == 1
    counted = [line for line in metrics.splitlines() if line.startswith("slm_ab_requests_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 1.0, counted
    assert sum(v.requests for v in ab_report(audit, "support").versions) == 1
    assert window_stats(audit, 3600).requests == 1


class Slow(Broken):
    """Counts its prompts like `Broken`, then thinks for a long time before its one word."""

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        import asyncio

        self.calls += 1
        await asyncio.sleep(30)
        yield Delta(text="late", finish_reason="stop")


def test_a_client_that_leaves_a_non_streamed_request_gives_back_everything_it_held(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """Cancelled mid-answer (the client left): the admission slot and the key's reserved tokens
    come back, and the audit row says 499, as for a stream the client left."""
    import asyncio
    import contextlib
    import sqlite3
    from types import SimpleNamespace

    from slmkit.serve.config import ServeConfig
    from slmkit.serve.gateway import Gateway
    from slmkit.serve.protocol import ChatCompletionRequest

    monkeypatch.setenv("TEAM_A_KEY", "sk-team-a")
    audit = tmp_path / "audit.db"
    config = ServeConfig.model_validate(
        {
            "keys": [{"name": "team-a", "key_env": "TEAM_A_KEY", "tpm": 1000}],
            "audit": {"path": str(audit)},
        }
    )
    engine = Slow("support", "v1")
    gateway = Gateway(config, {"support": engine})
    body = ChatCompletionRequest.model_validate(
        {"model": "support", "messages": [{"role": "user", "content": "Hi"}]}
    )
    request = SimpleNamespace(state=SimpleNamespace(key_id="team-a"), headers={})  # its name

    async def leave_mid_answer() -> None:
        await gateway.start()
        try:
            task = asyncio.create_task(gateway.handle_generation(body, request, "chat"))  # type: ignore[arg-type]
            while engine.calls == 0:  # admitted, reserved and generating
                await asyncio.sleep(0.01)
            assert gateway.admission.in_flight["support"] == 1
            assert gateway.key_limits.states["team-a"].reserved > 0
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert gateway.admission.in_flight["support"] == 0
            assert gateway.key_limits.states["team-a"].reserved == 0
        finally:
            await gateway.stop()

    asyncio.run(leave_mid_answer())
    with sqlite3.connect(audit) as conn:
        rows = conn.execute("SELECT status, error_code FROM requests").fetchall()
    assert rows == [(499, None)]
