"""Two gateways, one truth: two real `slm serve` processes (each with its llama-server child on the
embedded model) on one PostgreSQL and one Valkey/Redis, both started by the tests. Clients spread
over both: feedback is accepted by either for any completion, a key's limit holds across both,
`slm logs` and `slm feedback export` see all traffic, a promotion is served by both, and with one
gateway SIGKILLed under load no answered request's audit row and no accepted feedback is lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import run_slm
from serve_helpers import ServerProcess, needs_llama_server

pytestmark = [needs_llama_server, pytest.mark.slow]

KEYS = {"TEAM_A_KEY": "sk-team-a", "TEAM_B_KEY": "sk-team-b"}
RPM = 10  # team-a's limit, over both gateways together


def _chat(server: ServerProcess, key: str, text: str, max_tokens: int = 8) -> httpx.Response:
    body = {
        "model": "support",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0.7,  # not cacheable: every request reaches a model
    }
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(
        server.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=120
    )


def _feedback(server: ServerProcess, request_id: str, rating: int) -> httpx.Response:
    body = {"id": request_id, "rating": rating}
    headers = {"Authorization": "Bearer sk-team-b"}
    return httpx.post(server.base_url + "/v1/feedback", json=body, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: Any, cache_server: Any
) -> Any:
    """The servers' URLs, a registry with v1 and v2 (two files of the embedded GGUF) on the
    same database, and the serve config both gateways read."""
    from slmkit.models.embedded import embedded_gguf_path
    from slmkit.registry.store import Registry

    home = tmp_path_factory.mktemp("two-gateways")
    database = postgres_server.create_database()
    registry = Registry(database)
    gguf = embedded_gguf_path()
    second = home / "support-v2.gguf"
    try:
        os.link(gguf, second)
    except OSError:
        shutil.copyfile(gguf, second)
    assert registry.register(gguf, "export").id == "v1"
    assert registry.register(second, "export").id == "v2"
    registry.promote("v1", "support")
    registry.close()
    config = {
        "models": [{"id": "support", "ref": "@support", "reload_s": 0.3}],
        "llamacpp": {"ctx_size": 1024, "parallel": 2, "threads": 1},
        "keys": [
            {"name": "team-a", "key_env": "TEAM_A_KEY", "rpm": RPM},
            {"name": "team-b", "key_env": "TEAM_B_KEY"},
        ],
        "audit": {"log_text": True},
        "state": {"database": database, "cache": cache_server.url()},
    }
    config_path = home / "serve.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(config))
    return {"home": home, "database": database, "config": config, "config_path": config_path}


@pytest.fixture(scope="module")
def gateways(shared: Any) -> Iterator[list[ServerProcess]]:
    env = {"SLM_HOME": str(shared["home"]), **KEYS}
    servers = [ServerProcess([], config=shared["config"], env=env) for _ in range(2)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_feedback_is_accepted_by_either_gateway_for_any_completion(
    gateways: list[ServerProcess], shared: Any
) -> None:
    ids = []
    for i in range(4):
        response = _chat(gateways[i % 2], "sk-team-b", f"Hello {i}")
        assert response.status_code == 200, response.text
        ids.append((i % 2, response.json()["id"]))
    for which, request_id in ids:  # each to the gateway that did not answer it
        other = gateways[1 - which]
        answer = _feedback(other, request_id, 1 if which == 0 else -1)
        assert answer.status_code == 200, answer.text
        assert answer.json()["stored"] is True
    assert _feedback(gateways[0], "chatcmpl-nosuchid", 1).status_code == 404

    # the CLI sees the traffic of both: `slm logs` and `slm feedback export`
    logs = run_slm("logs", "--db", shared["database"], "--json", "--window", "1h")
    assert logs.returncode == 0, logs.stderr
    assert json.loads(logs.stdout)["requests"] >= len(ids)  # both gateways' rows
    out = shared["home"] / "approved.jsonl"
    config = str(shared["config_path"])
    export = run_slm(
        "feedback", "export", "--config", config, "--since", "1h", "--to", "sft", "--out", str(out)
    )
    assert export.returncode == 0, export.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # the thumbs-up answers of both gateways' completions (rated on the other gateway)
    assert len(rows) == 2, export.stdout


def test_a_keys_limit_holds_across_both_gateways(gateways: list[ServerProcess]) -> None:
    statuses = [_chat(gateways[i % 2], "sk-team-a", f"Limit {i}").status_code for i in range(14)]
    assert statuses.count(200) == RPM, statuses
    assert statuses[RPM:] == [429] * (14 - RPM), statuses


def test_a_promotion_is_served_by_both_gateways(gateways: list[ServerProcess], shared: Any) -> None:
    env = {"SLM_REGISTRY": shared["database"]}
    promoted = run_slm("models", "promote", "v2", "--as", "support", env=env)
    assert promoted.returncode == 0, promoted.stderr
    deadline = time.monotonic() + 60
    versions: list[Any] = []
    while time.monotonic() < deadline:
        versions = []
        for server in gateways:
            card = httpx.get(
                server.base_url + "/v1/models/support",
                headers={"Authorization": "Bearer sk-team-b"},
                timeout=10,
            ).json()
            versions.append(card.get("version"))
        if versions == ["v2", "v2"]:
            break
        time.sleep(0.2)
    assert versions == ["v2", "v2"]
    answer = _chat(gateways[1], "sk-team-b", "Which version?")
    assert answer.status_code == 200


def test_nothing_answered_or_accepted_is_lost_when_a_gateway_is_killed(
    gateways: list[ServerProcess], shared: Any
) -> None:
    """4 clients on each gateway ask and rate; the database stalls and gateway 0 is SIGKILLed
    meanwhile. Every completion a client got a 200 for has its audit row (with `audit.durable:
    false` this fails: answers sent during the stall die with the gateway's queue), and every
    feedback answered `stored` has its row."""
    import psycopg

    answered: list[str] = []
    stored: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(server: ServerProcess, n: int) -> None:
        for i in range(12):
            if stop.is_set() and server is gateways[0]:
                return
            try:
                response = _chat(server, "sk-team-b", f"Load {n}.{i}", max_tokens=4)
                if response.status_code != 200:
                    continue
                request_id = response.json()["id"]
                with lock:
                    answered.append(request_id)
                rated = _feedback(server, request_id, 1)
                if rated.status_code == 200 and rated.json().get("stored"):
                    with lock:
                        stored.append(request_id)
            except httpx.HTTPError:  # the killed gateway's clients see their connection drop
                continue

    threads = [
        threading.Thread(target=client, args=(gateways[k % 2], k), daemon=True) for k in range(8)
    ]
    for thread in threads:
        thread.start()
    while len(answered) < 8:
        time.sleep(0.05)
    # the database is slow for a moment (its table locked): answers that go out now are only on
    # record if the gateway waited for their rows; then gateway 0 is killed
    with psycopg.connect(shared["database"]) as conn:
        conn.execute("LOCK TABLE requests IN SHARE ROW EXCLUSIVE MODE")
        time.sleep(1.5)
        before = len(answered)
        victim = gateways[0].proc
        assert victim is not None
        os.kill(victim.pid, signal.SIGKILL)
        stop.set()
    assert before >= 8
    try:
        for thread in threads:
            thread.join(timeout=300)
    finally:
        victim.wait(timeout=30)
        gateways[0].start()  # the module's other tests find two gateways in any order
    assert len(answered) > 8
    with psycopg.connect(shared["database"]) as conn:
        logged = {row[0] for row in conn.execute("SELECT id FROM requests")}
        rated = {row[0] for row in conn.execute("SELECT request_id FROM feedback")}
    assert set(answered) <= logged, sorted(set(answered) - logged)
    assert set(stored) <= rated, sorted(set(stored) - rated)
