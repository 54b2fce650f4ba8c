"""Per-key limits and the response cache shared by several gateways through a real Valkey/Redis
server (started on a free port), beside the in-process default: the same requests, two gateways,
one truth when `state.cache` is set."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from typing import Any

import pytest

from serve_helpers import ScriptedEngine
from state_servers import start_cache_server

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0}


def _gateways(
    tmp_path: Any, monkeypatch: Any, n: int, cache_url: str | None, **key: Any
) -> tuple[ExitStack, list[Any], list[ScriptedEngine]]:
    """`n` gateways with one key `team-a` (limits `key`), on one Valkey/Redis or each alone."""
    from fastapi.testclient import TestClient

    from slmkit.serve.app import create_app
    from slmkit.serve.config import ServeConfig
    from slmkit.serve.gateway import Gateway

    monkeypatch.setenv("TEAM_A_KEY", "sk-team-a")
    stack = ExitStack()
    clients, engines = [], []
    for i in range(n):
        settings: dict[str, Any] = {
            "keys": [{"name": "team-a", "key_env": "TEAM_A_KEY", **key}],
            "audit": {"path": str(tmp_path / f"audit{i}.db")},
            "cache": {"enabled": True},
        }
        if cache_url is not None:
            settings["state"] = {"cache": cache_url}
        engine = ScriptedEngine("m")
        gateway = Gateway(ServeConfig.model_validate(settings), {"m": engine})
        clients.append(stack.enter_context(TestClient(create_app(gateway))))
        engines.append(engine)
    return stack, clients, engines


AUTH = {"Authorization": "Bearer sk-team-a"}


@pytest.mark.parametrize("backend", ["memory", "valkey"])
def test_a_keys_requests_per_minute_hold_across_gateways_only_when_shared(
    tmp_path: Any, monkeypatch: Any, backend: str, request: Any
) -> None:
    url = request.getfixturevalue("cache_url") if backend == "valkey" else None
    stack, clients, _ = _gateways(tmp_path, monkeypatch, 2, url, rpm=4)
    with stack:
        statuses = [
            clients[i % 2].post("/v1/chat/completions", json=CHAT, headers=AUTH).status_code
            for i in range(6)
        ]
        refused = clients[0].post("/v1/chat/completions", json=CHAT, headers=AUTH)
    if backend == "valkey":  # one window for the key: the 5th request on either gateway waits
        assert statuses == [200, 200, 200, 200, 429, 429]
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert "Limit 4, Used 4" in refused.json()["error"]["message"]
    else:  # each gateway counts alone: 4 a minute on each
        assert statuses == [200] * 6
        assert refused.status_code == 200


def test_a_deterministic_answer_stored_by_one_gateway_is_served_by_the_other(
    tmp_path: Any, monkeypatch: Any, cache_url: str
) -> None:
    stack, clients, engines = _gateways(tmp_path, monkeypatch, 2, cache_url)
    with stack:
        first = clients[0].post("/v1/chat/completions", json=CHAT, headers=AUTH)
        second = clients[1].post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert (first.headers["x-slm-cache"], second.headers["x-slm-cache"]) == ("miss", "hit")
    text = first.json()["choices"][0]["message"]["content"]
    assert second.json()["choices"][0]["message"]["content"] == text == "Hello there"
    assert [e.calls for e in engines] == [1, 0]


def test_reserved_tokens_are_seen_by_every_gateway_and_lapse_if_never_settled(
    cache_url: str,
) -> None:
    """tpm 100: a request in flight holding 100 prompt tokens refuses the next on any gateway;
    once it used 5 the next goes; a reservation nobody settles (its gateway died) lapses after
    its hold time."""
    import redis.asyncio as redis_asyncio

    from slmkit.state.redis_state import KeyWindows

    limits = (None, 100, None)

    async def scenario() -> None:
        one, two = redis_asyncio.from_url(cache_url), redis_asyncio.from_url(cache_url)
        a, b = KeyWindows(one), KeyWindows(two)  # two gateways
        try:
            assert await a.admit("team-a", limits, 100, "t1", hold_s=60) is None
            refused = await b.admit("team-a", limits, 20, "t2", hold_s=60)
            assert refused is not None and (refused.limit, refused.used) == ("tpm", 100)
            assert 0 < refused.wait_s <= 60
            await a.settle("team-a", "t1", 5)
            assert await b.admit("team-a", limits, 20, "t2", hold_s=60) is None
            # a request whose gateway died holds its tokens only until its hold time is over
            assert await a.admit("team-a", limits, 95, "t3", hold_s=1) is None
            assert (await b.admit("team-a", limits, 10, "t4", hold_s=60, commit=False)) is not None
            await asyncio.sleep(1.2)
            assert await b.admit("team-a", limits, 10, "t4", hold_s=60, commit=False) is None
        finally:
            await one.aclose()
            await two.aclose()

    asyncio.run(scenario())


def test_a_shared_state_server_that_is_not_there_stops_the_start_in_one_line(
    tmp_path: Any,
) -> None:
    from slmkit.child_process import free_port
    from slmkit.errors import ConfigError
    from slmkit.serve.config import ServeConfig
    from slmkit.serve.gateway import Gateway

    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    config = ServeConfig.model_validate(
        {"state": {"cache": url}, "audit": {"path": str(tmp_path / "a.db")}}
    )
    gateway = Gateway(config, {"m": ScriptedEngine("m")})

    async def start() -> None:
        try:
            await gateway.start()
        finally:
            await gateway.stop()

    with pytest.raises(ConfigError) as caught:
        asyncio.run(start())
    message = str(caught.value)
    assert message.startswith("state.cache: cannot reach redis://127.0.0.1:")
    assert "secret" not in message and "\n" not in message


def test_a_key_with_limits_is_refused_not_waved_through_when_the_server_goes_away(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """The server stops while the gateway runs: a limited key gets 503 `state_unavailable` (its
    limits are never skipped)."""
    server = start_cache_server(tmp_path / "cache")
    url = server.__enter__().url()
    stack, clients, _ = _gateways(tmp_path, monkeypatch, 1, url, rpm=100)
    with stack:
        try:
            ok = clients[0].post("/v1/chat/completions", json=CHAT, headers=AUTH)
        finally:
            server.__exit__(None, None, None)
        gone = clients[0].post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert ok.status_code == 200
    assert gone.status_code == 503, gone.text
    assert gone.json()["error"]["code"] == "state_unavailable"
    assert gone.headers["Retry-After"] == "2"
