"""Replicas: one model id answered by two real llama-server children behind a real `slm serve`.
Least-busy spreads 40 requests over both (read from the per-replica metric and the audit rows),
round-robin alternates exactly, and a killed replica is cooled down while every request still
succeeds on the other (retry before the first token), and one SIGKILLed while answering 8
concurrent clients leaves every one of them answered by the other (a non-streamed answer is asked
again). The logprobs of the shared OpenAI HTTP part are read from a real llama-server. The
balancing rules themselves (strategies, cooldown, the soonest-cooled fallback, retries, outcomes)
run on fake in-memory engines and a fake clock below."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from serve_helpers import MemoryEngine, ServerProcess, decoding, needs_llama_server
from slmkit.serve.engines.base import Delta
from slmkit.serve.engines.errors import EngineError, engine_unavailable, invalid_request
from slmkit.serve.engines.replicas import ReplicaPool
from slmkit.serve.engines.request import GenerationRequest
from slmkit.serve.metrics import GatewayMetrics

SAY_HI = [{"role": "user", "content": "Say hi."}]
CONFIG = {
    # health_interval_s: the supervisor would notice a dead child only after 60 s, so the test
    # sees the balancer's own cooldown keep traffic off the killed replica
    "llamacpp": {"ctx_size": 512, "parallel": 2, "threads": 1, "health_interval_s": 60},
    "models": [
        {"id": "pool", "ref": "default", "replicas": 2, "allowed_fails": 1, "cooldown_s": 120},
        {
            "id": "rr",
            "deployments": [{"ref": "default"}, {"ref": "default"}],
            "strategy": "round-robin",
        },
        # one replica killed by a test each: their own model ids, so that the others' stay whole
        # in any order of the tests
        {"id": "cooled", "ref": "default", "replicas": 2, "allowed_fails": 1, "cooldown_s": 120},
        {"id": "midway", "ref": "default", "replicas": 2, "allowed_fails": 1, "cooldown_s": 120},
    ],
}


# -- real processes -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("replicas-home")


@pytest.fixture(scope="module")
def server(home: Path):
    with ServerProcess([], config=CONFIG, env={"SLM_HOME": str(home)}) as srv:
        yield srv


def ask(server: ServerProcess, model: str) -> Any:
    return server.client().chat.completions.create(
        model=model, messages=SAY_HI, max_tokens=3, temperature=0
    )


def ask_many(server: ServerProcess, model: str, n: int, workers: int = 4) -> list[Any]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda _: ask(server, model), range(n)))


def served(server: ServerProcess, model: str, replica: str, outcome: str = "ok") -> float:
    return server.metric(
        "slm_replica_requests_total", model=model, replica=replica, outcome=outcome
    )


def audit_replicas(home: Path, ids: list[str]) -> list[str]:
    """The audit log's `replica` of each request id, in the order given."""
    conn = sqlite3.connect(home / "serve" / "audit.db")
    marks = ",".join("?" for _ in ids)
    deadline = time.monotonic() + 10
    try:
        while True:  # the audit writer is a background thread
            rows = dict(
                conn.execute(f"SELECT id, replica FROM requests WHERE id IN ({marks})", ids)
            )
            if len(rows) == len(ids) or time.monotonic() > deadline:
                return [rows.get(i) for i in ids]
            time.sleep(0.1)
    finally:
        conn.close()


def pool_children(server: ServerProcess, model: str) -> list[Any]:
    """The llama-server children serving `model` (started with `-a MODEL`)."""
    return [
        c for c in server.engine_children() if c.cmdline()[c.cmdline().index("-a") + 1] == model
    ]


@needs_llama_server
def test_least_busy_spreads_requests_over_both_replicas(server: ServerProcess, home: Path) -> None:
    replies = ask_many(server, "pool", 40)
    assert all(r.choices[0].message.content for r in replies)
    counts = [served(server, "pool", name) for name in ("llamacpp-0", "llamacpp-1")]
    assert sum(counts) == 40 and min(counts) >= 12, counts  # each gets 30-70 %
    rows = audit_replicas(home, [r.id for r in replies])
    assert [rows.count("llamacpp-0"), rows.count("llamacpp-1")] == counts
    assert server.metric("slm_replica_up", model="pool") == 2
    health = {e["id"]: e for e in server.get("/health").json()["engines"]}
    assert health["pool"]["engine"] == "replicas" and health["pool"]["strategy"] == "least-busy"
    assert [r["replica"] for r in health["pool"]["replicas"]] == ["llamacpp-0", "llamacpp-1"]
    assert all(r["state"] == "ready" and r["up"] for r in health["pool"]["replicas"])
    assert server.client().models.retrieve("pool").owned_by == "slmkit:replicas"


@needs_llama_server
def test_round_robin_alternates_exactly(server: ServerProcess, home: Path) -> None:
    replies = [ask(server, "rr") for _ in range(6)]
    rows = audit_replicas(home, [r.id for r in replies])
    assert rows[0] in ("llamacpp-0", "llamacpp-1")
    other = "llamacpp-1" if rows[0] == "llamacpp-0" else "llamacpp-0"
    assert rows == [rows[0], other] * 3


@needs_llama_server
def test_logprobs_come_from_a_real_llama_server(server: ServerProcess) -> None:
    from slmkit.serve.engines.remote import RemoteEngine
    from slmkit.serve.engines.settings import UpstreamSettings

    child = pool_children(server, "rr")[0]
    port = child.cmdline()[child.cmdline().index("--port") + 1]
    settings = UpstreamSettings(url=f"http://127.0.0.1:{port}/v1")

    async def run(**passthrough: Any) -> list[Delta]:
        engine = RemoteEngine("rr", settings, None)
        request = GenerationRequest(
            "rr", SAY_HI, None, max_tokens=4, stream=True, temperature=0, passthrough=passthrough
        )
        await engine.start()
        try:
            return [d async for d in engine.generate(request)]
        finally:
            await engine.stop()

    deltas = asyncio.run(run(logprobs=True))
    logprobs = [lp for d in deltas for lp in d.logprobs]
    tokens = next(d.completion_tokens for d in deltas if d.completion_tokens is not None)
    assert len(logprobs) == tokens > 0 and all(lp <= 0 for lp in logprobs), logprobs
    assert not any(d.logprobs for d in asyncio.run(run()))


@needs_llama_server
def test_killed_replica_is_cooled_and_no_request_fails(server: ServerProcess) -> None:
    before = {name: served(server, "cooled", name) for name in ("llamacpp-0", "llamacpp-1")}
    victim = pool_children(server, "cooled")[1]
    victim.kill()
    while victim.is_running() and victim.status() != psutil.STATUS_ZOMBIE:  # reaped only later
        time.sleep(0.01)
    replies = ask_many(server, "cooled", 8)  # any that meets the dead child is retried on the other
    assert all(r.choices[0].message.content for r in replies)
    failed = {name: served(server, "cooled", name, "failed") for name in before}
    dead = max(failed, key=lambda name: failed[name])
    alive = "llamacpp-1" if dead == "llamacpp-0" else "llamacpp-0"
    assert failed == {dead: 1, alive: 0}  # allowed_fails: 1, then it is left out
    assert server.metric("slm_replica_up", model="cooled", replica=dead) == 0
    assert server.metric("slm_replica_up", model="cooled", replica=alive) == 1

    replies = ask_many(server, "cooled", 8)
    assert all(r.choices[0].message.content for r in replies)
    assert served(server, "cooled", dead) == before[dead]  # cooled: nothing more went there
    assert served(server, "cooled", alive) == before[alive] + 16
    health = server.get("/health")
    assert health.status_code == 200  # the model is still served
    pool = {e["id"]: e for e in health.json()["engines"]}["cooled"]
    replica = {r["replica"]: r for r in pool["replicas"]}[dead]
    assert not replica["up"] and replica["cooled_for_s"] > 60


@needs_llama_server
def test_a_replica_killed_mid_answer_leaves_every_request_answered(
    server: ServerProcess, home: Path
) -> None:
    """8 concurrent non-streamed requests; one replica is SIGKILLed while it is generating: each
    request it held is asked again on the other, so every client gets a 200 and one audit row."""
    victim = pool_children(server, "midway")[0]
    story = [{"role": "user", "content": "Tell a long story about a lighthouse keeper."}]

    def long_ask(_: int) -> Any:
        return server.client().chat.completions.with_raw_response.create(
            model="midway", messages=story, max_tokens=96, temperature=0
        )

    before = server.metric("slm_failovers_total", model="midway")
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(long_ask, i) for i in range(8)]
        deadline = time.monotonic() + 60
        while not decoding(victim):
            assert time.monotonic() < deadline, "the victim never started answering"
            time.sleep(0.02)
        victim.kill()
        raws = [f.result() for f in futures]  # an error here is a request that failed
    replies = [raw.parse() for raw in raws]
    assert all(r.choices[0].message.content for r in replies)
    assert server.metric("slm_failovers_total", model="midway") > before  # some were cut part-way
    ids = [raw.headers["x-request-id"] for raw in raws]
    conn = sqlite3.connect(home / "serve" / "audit.db")
    try:
        wait_until = time.monotonic() + 10
        while True:  # the audit writer is a background thread
            marks = ",".join("?" for _ in ids)
            rows = conn.execute(
                f"SELECT id, status FROM requests WHERE id IN ({marks})", ids
            ).fetchall()
            if len(rows) >= len(ids) or time.monotonic() > wait_until:
                break
            time.sleep(0.1)
    finally:
        conn.close()
    assert sorted(rows) == sorted((i, 200) for i in ids)  # one row each, none failed


# -- the balancing rules on fake engines and a fake clock -------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeEngine(MemoryEngine):
    """An in-memory engine: answers its name, or raises `error` before (or after) its first delta."""

    def __init__(self, name: str) -> None:
        super().__init__("m")
        self.name = name
        self.error: EngineError | None = None
        self.fail_after_first = False

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        self.calls += 1
        if self.error is not None and not self.fail_after_first:
            raise self.error
        yield Delta(text=self.name)
        if self.error is not None:
            raise self.error
        yield Delta(finish_reason="stop")


def make_pool(strategy: str = "least-busy", **kwargs: Any) -> tuple[ReplicaPool, list[FakeEngine]]:
    engines = [FakeEngine("a"), FakeEngine("b"), FakeEngine("c")]
    pool = ReplicaPool(
        "m", [(e.name, e) for e in engines], strategy=strategy, clock=FakeClock(), **kwargs
    )
    return pool, engines


def answer(pool: ReplicaPool) -> tuple[str, str | None]:
    """The text of one request through the pool, and the replica it says answered."""
    request = GenerationRequest("m", SAY_HI, None, max_tokens=4, stream=False)

    async def run() -> str:
        return "".join([d.text async for d in pool.generate(request)])

    return asyncio.run(run()), request.replica


def test_round_robin_cycles_and_skips_engines_that_are_not_ready() -> None:
    pool, engines = make_pool("round-robin")
    assert [answer(pool)[0] for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    engines[1].state = "restarting"
    assert [answer(pool)[0] for _ in range(4)] == ["a", "c", "a", "c"]


def test_least_busy_takes_the_fewest_in_flight_and_ties_rotate() -> None:
    pool, _ = make_pool()
    pool.replicas[0].in_flight, pool.replicas[1].in_flight, pool.replicas[2].in_flight = 2, 0, 1
    assert pool.pick(set()) is pool.replicas[1]
    pool.replicas[1].in_flight = 5
    assert pool.pick(set()) is pool.replicas[2]
    for replica in pool.replicas:
        replica.in_flight = 0
    assert sorted(answer(pool)[0] for _ in range(3)) == ["a", "b", "c"]  # sequential: ties rotate


def test_latency_prefers_the_lowest_moving_average_and_tries_unmeasured_first() -> None:
    pool, _ = make_pool("latency")
    pool.replicas[0].observe_latency(0.5)
    pool.replicas[1].observe_latency(0.2)
    assert pool.pick(set()) is pool.replicas[2]  # never measured
    pool.replicas[2].observe_latency(0.3)
    assert pool.pick(set()) is pool.replicas[1]
    for _ in range(4):
        pool.replicas[1].observe_latency(1.0)  # 0.2 -> 0.44 -> 0.608 -> 0.726 -> 0.808
    assert pool.replicas[1].latency_s == pytest.approx(0.8079, abs=1e-4)
    assert pool.pick(set()) is pool.replicas[2]


def test_failure_before_first_token_is_retried_on_another_replica() -> None:
    pool, engines = make_pool("round-robin", allowed_fails=2, cooldown_s=30)
    engines[0].error = engine_unavailable("m")
    assert answer(pool) == ("b", "b")  # a failed, b answered
    assert pool.replicas[0].fails == 1 and pool.is_up(pool.replicas[0])
    answer(pool)  # c
    assert answer(pool) == ("b", "b")  # a failed a second time: now cooled
    assert pool.replicas[0].cooled_until == pool.clock() + 30 and not pool.is_up(pool.replicas[0])
    calls = engines[0].calls
    assert {answer(pool)[0] for _ in range(6)} == {"b", "c"} and engines[0].calls == calls
    pool.clock.now += 30  # type: ignore[attr-defined]
    engines[0].error = None
    assert "a" in {answer(pool)[0] for _ in range(3)}  # back after its cooldown


def test_all_cooled_tries_the_one_whose_cooldown_ends_first() -> None:
    pool, engines = make_pool(allowed_fails=1, cooldown_s=30, retries=0)
    clock: FakeClock = pool.clock  # type: ignore[assignment]
    for engine, step in zip(engines, (5.0, 1.0, 3.0), strict=True):
        engine.error = engine_unavailable("m")
        with pytest.raises(EngineError):
            answer(pool)
        clock.now += step
    assert not any(pool.is_up(r) for r in pool.replicas)
    # cooled until: a = 1030, b = 1035, c = 1036 -> a first, even while all are cooled
    for engine in engines:
        engine.error = None
    assert answer(pool) == ("a", "a")
    assert pool.is_up(pool.replicas[0])  # a success ends its cooldown


def test_client_errors_are_not_retried_and_mid_answer_failures_are_raised() -> None:
    pool, engines = make_pool("round-robin")
    metrics = GatewayMetrics()
    pool.attach_metrics(metrics)
    engines[0].error = invalid_request("bad schema")
    with pytest.raises(EngineError) as rejected:
        answer(pool)
    assert (
        rejected.value.kind == "bad_request"
        and engines[1].calls == 0
        and pool.replicas[0].fails == 0
    )
    engines[1].error, engines[1].fail_after_first = engine_unavailable("m"), True
    with pytest.raises(EngineError) as broken:  # b's first token went out: no one can take over
        answer(pool)
    assert (
        broken.value.kind == "unavailable" and engines[2].calls == 0 and pool.replicas[1].fails == 1
    )
    text = metrics.render().decode()
    for replica, outcome in (("a", "rejected"), ("b", "failed")):
        line = (
            f'slm_replica_requests_total{{model="m",outcome="{outcome}",replica="{replica}"}} 1.0'
        )
        assert line in text
    assert 'slm_replica_in_flight{model="m",replica="a"} 0.0' in text
    assert 'slm_replica_up{model="m",replica="c"} 1.0' in text


def test_no_ready_replica_is_503() -> None:
    pool, engines = make_pool()
    for engine in engines:
        engine.state = "failed"
    assert pool.state == "failed"
    with pytest.raises(EngineError) as down:
        answer(pool)
    assert down.value.kind == "unavailable" and "no replica is ready" in down.value.message


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "models:\n  - id: m\n    ref: default\n    replicas: 0\n",
            "serve.yaml:4: models.0.replicas:",
        ),
        (
            "models:\n  - id: m\n    ref: default\n    replicas: 2\n    strategy: random\n",
            "serve.yaml:5: models.0.strategy: Input should be 'least-busy', 'round-robin' or 'latency'",
        ),
        (
            "models:\n  - id: m\n    deployments: [{ref: default, upstream: {url: http://h/v1}}]\n",
            "models.0.deployments.0: give either `ref` or `upstream`",
        ),
        (
            "models:\n  - id: m\n    upstream: {url: http://h/v1}\n    replicas: 2\n",
            "models.0: replicas copies a local `ref`",
        ),
    ],
    ids=["replicas-zero", "unknown-strategy", "deployment-both", "replicas-of-upstream"],
)
def test_bad_replica_config_is_one_line_error(
    slm, tmp_path: Path, yaml_text: str, expected: str
) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml_text)
    result = slm("serve", "--config", str(path), "--port", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], lines


def test_a_group_passes_the_restart_hook_to_its_members() -> None:
    """The gateway counts a member's restart against the group's model id: the hook it sets on a
    pool, an A/B split or an alias reaches the members that report restarts."""
    from slmkit.serve.engines.ab import ABEngine, Arm

    class Restarting(FakeEngine):
        on_restart: Any = None

    a, b = Restarting("a"), Restarting("b")
    pool = ReplicaPool("m", [("a", a), ("b", b)])
    split = ABEngine("s", [Arm("v1", 1.0, a), Arm("v2", 1.0, b)])

    def hook(model_id: str) -> None: ...

    for group in (pool, split):
        a.on_restart = b.on_restart = None
        group.on_restart = hook
        assert (group.on_restart, a.on_restart, b.on_restart) == (hook, hook, hook)


def test_a_group_whose_member_fails_to_start_stops_the_others_and_says_why() -> None:
    from slmkit.serve.engines.ab import ABEngine, Arm

    class Starting(FakeEngine):
        def __init__(self, name: str, broken: bool = False) -> None:
            super().__init__(name)
            self.broken, self.stopped = broken, False

        async def start(self) -> None:
            if self.broken:
                raise RuntimeError(f"{self.name} cannot load its model")

        async def stop(self) -> None:
            self.stopped = True

    for make in (
        lambda a, b: ReplicaPool("m", [("a", a), ("b", b)]),
        lambda a, b: ABEngine("s", [Arm("v1", 1.0, a), Arm("v2", 1.0, b)]),
    ):
        good, bad = Starting("a"), Starting("b", broken=True)
        with pytest.raises(RuntimeError, match="b cannot load its model"):
            asyncio.run(make(good, bad).start())
        assert good.stopped and bad.stopped
