"""A/B: one model id split 50/50 between two versions (the embedded GGUF twice, as v1 and v2) behind
a real `slm serve`, with the response cache on. 200 requests from distinct users land on both
versions within a binomial tolerance; one user always meets the same version; requests without a
user are drawn at random. Feedback favours v2, a route over the split escalates a few answers, and
`slm logs ab` reports per-version figures equal to direct SQL counts, with a significant verdict.
The statistics themselves are checked against values worked out by hand."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_helpers import ServerProcess, needs_llama_server
from slmkit.serve.ab_report import mann_whitney_p, sample_size, two_proportion_p, wilson_interval

SAY_HI = [{"role": "user", "content": "Say hi."}]
POEM = [{"role": "user", "content": "Write a short poem about the sea."}]
ARMS = [
    {"ref": "default", "weight": 1, "name": "v1"},
    {"ref": "default", "weight": 1, "name": "v2"},
]
CONFIG: dict[str, Any] = {
    "llamacpp": {"ctx_size": 512, "parallel": 4, "threads": 1},
    "cache": {"enabled": True},  # a split must not answer from it: each request meets its arm
    "models": [{"id": "support", "ab": ARMS}, {"id": "big", "ref": "default"}],
    # no real answer is that sure of every token: every answer through `front` escalates to `big`
    "routes": [
        {"id": "front", "chain": ["support", "big"], "escalate": {"min_mean_logprob": -0.001}}
    ],
}
USERS = 200


@dataclass
class Traffic:
    by_user: list[str]  # request ids of the 200 distinct users
    loyal: list[str]  # one user, 10 times and once streamed
    anonymous: list[str]  # no user
    routed: list[str]  # through the escalating route
    cache_headers: set[str | None]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-ab-home")


@pytest.fixture(scope="module")
def server(home: Path):
    with ServerProcess([], config=CONFIG, env={"SLM_HOME": str(home)}) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: ServerProcess):
    """One keep-alive client for the many small requests (a new connection each costs more)."""
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        yield client


def ask(http: httpx.Client, user: str | None, model: str = "support") -> tuple[str, str | None]:
    body: dict[str, Any] = {"model": model, "max_tokens": 1, "temperature": 0, "messages": SAY_HI}
    if model == "front":
        body.update(messages=POEM, max_tokens=12)
    if user is not None:
        body["user"] = user
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["id"], response.headers.get("x-slm-cache")


def audit(home: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(home / "serve" / "audit.db") as conn:
        return conn.execute(sql, args).fetchall()


def versions_of(home: Path, ids: list[str]) -> dict[str, str]:
    """Request id -> version from the audit log (its writer thread lags the answers a little)."""
    marks = ",".join("?" for _ in ids)
    deadline = time.monotonic() + 20
    while True:
        rows = dict(audit(home, f"SELECT id, version FROM requests WHERE id IN ({marks})", *ids))
        if len(rows) == len(ids) or time.monotonic() > deadline:
            assert len(rows) == len(ids), f"{len(ids) - len(rows)} audit rows missing"
            return rows
        time.sleep(0.1)


@pytest.fixture(scope="module")
def traffic(http: httpx.Client, home: Path) -> Traffic:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: ask(http, f"user-{i}"), range(USERS)))
        loyal = list(pool.map(lambda _: ask(http, "loyal-user")[0], range(10)))
        anonymous = list(pool.map(lambda _: ask(http, None)[0], range(20)))
        routed = list(pool.map(lambda i: ask(http, f"routed-{i}", "front")[0], range(6)))
    body = {"model": "support", "messages": SAY_HI, "max_tokens": 2, "stream": True}
    streamed = http.post("/v1/chat/completions", json={**body, "user": "loyal-user"})
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text, streamed.text
    loyal.append(streamed.headers["x-request-id"])  # a stream meets the user's version too
    by_user = [request_id for request_id, _ in answers]
    versions = versions_of(home, by_user + loyal + anonymous + routed)
    # feedback: v2 gets 30 thumbs up; v1 10 up and 20 down (the rest stays unrated)
    plan = {"v1": [1] * 10 + [-1] * 20, "v2": [1] * 30}
    for version, ratings in plan.items():
        ids = [i for i in by_user if versions[i] == version]
        for request_id, rating in zip(ids, ratings, strict=False):
            sent = http.post("/v1/feedback", json={"id": request_id, "rating": rating})
            assert sent.status_code == 200, sent.text
    return Traffic(by_user, loyal, anonymous, routed, {header for _, header in answers})


@needs_llama_server
@pytest.mark.slow
def test_distinct_users_split_about_half_and_half(traffic: Traffic, home: Path) -> None:
    versions = versions_of(home, traffic.by_user)
    counts = {v: list(versions.values()).count(v) for v in ("v1", "v2")}
    assert sum(counts.values()) == USERS, counts  # every answer carries its version
    assert all(75 <= n <= 125 for n in counts.values()), counts  # binomial(200, 0.5): ~3.5 sd
    # deterministic requests, cache on: none was served from it (nor counted a miss)
    assert traffic.cache_headers == {None}
    cached = audit(home, "SELECT COUNT(*) FROM requests WHERE cached = 1")
    assert cached == [(0,)]


@needs_llama_server
@pytest.mark.slow
def test_one_user_always_meets_one_version(traffic: Traffic, home: Path) -> None:
    assert len(set(versions_of(home, traffic.loyal).values())) == 1
    # without a user every request is drawn: 20 draws all alike has odds of 2 in a million
    assert set(versions_of(home, traffic.anonymous).values()) == {"v1", "v2"}


@needs_llama_server
@pytest.mark.slow
def test_models_and_health_list_the_versions_and_weights(server: ServerProcess) -> None:
    cards = {m["id"]: m for m in server.get("/v1/models").json()["data"]}
    assert cards["support"]["owned_by"] == "slmkit:ab"
    expected = [{"version": v, "weight": 1.0, "share": 0.5} for v in ("v1", "v2")]
    assert cards["support"]["versions"] == expected
    assert "versions" not in cards["big"]
    engines = {e["id"]: e for e in server.get("/health").json()["engines"]}
    split = engines["support"]
    assert (split["engine"], split["state"], split["sticky"]) == ("ab", "ready", "user")
    assert [(v["version"], v["weight"], v["state"]) for v in split["versions"]] == [
        ("v1", 1.0, "ready"),
        ("v2", 1.0, "ready"),
    ]


@needs_llama_server
@pytest.mark.slow
def test_metrics_count_each_version_as_the_audit_log_does(
    traffic: Traffic, server: ServerProcess, home: Path
) -> None:
    audited = dict(audit(home, "SELECT version, COUNT(*) FROM requests GROUP BY version"))
    assert set(audited) == {"v1", "v2"}  # the route's escalated answers keep their version
    assert sum(audited.values()) == USERS + 11 + 20 + 6
    for version, count in audited.items():
        counted = server.metric("slm_ab_requests_total", model="support", version=version)
        assert counted == count, (version, counted, count)


def sql_figures(home: Path) -> dict[str, dict[str, int]]:
    rows = audit(
        home,
        "SELECT r.version, COUNT(*), COUNT(f.rating), COALESCE(SUM(f.rating > 0), 0), "
        "SUM(r.route_reason LIKE 'escalated%') FROM requests r "
        "LEFT JOIN feedback f ON f.request_id = r.id GROUP BY r.version",
    )
    keys = ("requests", "rated", "thumbs_up", "escalated")
    return {version: dict(zip(keys, rest, strict=True)) for version, *rest in rows}


@needs_llama_server
@pytest.mark.slow
def test_logs_ab_json_equals_the_sql_counts(traffic: Traffic, home: Path, slm) -> None:
    result = slm("logs", "ab", "support", "--db", str(home / "serve" / "audit.db"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected = sql_figures(home)
    assert expected["v1"]["rated"] == expected["v2"]["rated"] == 30
    assert expected["v1"]["escalated"] + expected["v2"]["escalated"] == 6
    for figures in report["versions"]:
        want = expected[figures["version"]]
        assert {k: figures[k] for k in want} == want, figures
        assert figures["errors"] == 0
        assert figures["feedback_rate"] == pytest.approx(want["rated"] / want["requests"])
        low, high = figures["thumbs_up_ci95"]
        assert low < figures["thumbs_up_share"] < high or figures["thumbs_up_share"] == 1.0
        assert 0 < figures["latency_p50"] <= figures["latency_p95"]
    assert [v["version"] for v in report["versions"]] == ["v1", "v2"]  # v1: the baseline
    (comparison,) = report["comparisons"]
    assert comparison["p_value"] < 0.001  # 30/30 against 10/30
    assert comparison["verdict"].startswith("v2 better than v1 (p=")
    assert 0 <= comparison["latency_p_value"] <= 1


@needs_llama_server
@pytest.mark.slow
def test_logs_ab_table_shows_each_versions_figures(traffic: Traffic, home: Path, slm) -> None:
    db = str(home / "serve" / "audit.db")
    result = slm("logs", "ab", "support", "--db", db, "--since", "1h", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    expected = sql_figures(home)
    for version, want in expected.items():
        line = next(ln for ln in result.stdout.splitlines() if re.match(rf"\W*{version}\b", ln))
        cells = [c.strip() for c in re.split(r"[│|]", line) if c.strip()]
        assert cells[0] == version and int(cells[1]) == want["requests"], cells
        assert cells[5].startswith(f"{want['rated']} ("), cells
        share = round(100 * want["thumbs_up"] / want["rated"])
        assert cells[6].startswith(f"{share}% ("), cells
        assert cells[7].startswith(f"{want['escalated']} ("), cells
    assert "thumbs up: v2 better than v1 (p=" in result.stdout


def one_line_error(result: Any) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    return str(lines[0])


@needs_llama_server
@pytest.mark.slow
def test_a_model_that_only_took_escalations_has_no_versions(traffic: Traffic, home: Path) -> None:
    """`big` answered only what the route escalated: those versions are the split's, not its own
    (in-process; the CLI's one-line error path is run by the serve config test below)."""
    from slmkit.errors import SlmError
    from slmkit.serve.ab_report import ab_report

    with pytest.raises(SlmError, match=r"^--ab: no answers of 'big' with a version"):
        ab_report(home / "serve" / "audit.db", "big")
    assert [v.version for v in ab_report(home / "serve" / "audit.db", "support").versions] == [
        "v1",
        "v2",
    ]


def test_since_takes_a_date_a_time_or_a_duration() -> None:
    from slmkit.errors import SlmError
    from slmkit.serve.logs import parse_time

    def parse_since(text: str, now: float | None = None) -> float:
        return parse_time(text, "--since", now)

    assert parse_since("2026-11-27") == 1795737600.0  # midnight UTC
    assert parse_since("2026-11-27T01:00+01:00") == 1795737600.0
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    with pytest.raises(SlmError, match=r"^--since: 'yesterday' is not a date"):
        parse_since("yesterday")


@dataclass
class Stub:
    state: str = "ready"


def test_weights_share_the_users_and_each_user_keeps_an_arm() -> None:
    """3:1 over 4000 users, by the same hash the server uses; an arm that is down hands its users
    to the other until it is back (stub engines: only their state is read)."""
    from slmkit.serve.engines.ab import ABEngine, Arm
    from slmkit.serve.engines.request import GenerationRequest

    v2 = Stub()
    split = ABEngine("support", [Arm("v1", 3.0, Stub()), Arm("v2", 1.0, v2)])  # type: ignore[arg-type]

    def arm_of(user: str) -> str:
        request = GenerationRequest("support", SAY_HI, None, 1, False, user=user)
        return split.assign(request).name

    names = [arm_of(f"user-{i}") for i in range(4000)]
    assert 2880 <= names.count("v1") <= 3120, names.count("v1")  # 3000 +- 4.4 sd
    assert all(arm_of(f"user-{i}") == names[i] for i in range(0, 4000, 97))
    assert split.state == "ready"
    v2.state = "restarting"
    assert {arm_of(f"user-{i}") for i in range(0, 4000, 7)} == {"v1"}
    assert split.state == "ready"  # v1 still answers
    v2.state = "ready"
    assert [arm_of(f"user-{i}") for i in range(0, 4000, 97)] == names[::97]


def test_with_an_arm_down_only_its_users_move() -> None:
    """Three arms, the first one down: the users of the two that are up keep their arm, the down
    arm's users spread over the others by weight, and all return when it is back."""
    from slmkit.serve.engines.ab import ABEngine, Arm

    down = Stub()
    split = ABEngine(
        "support",
        [Arm("a", 1.0, down), Arm("b", 1.0, Stub()), Arm("c", 2.0, Stub())],  # type: ignore[arg-type]
    )
    points = [i / 4000 + 1e-5 for i in range(4000)]
    before = [split.arm_at(p).name for p in points]
    down.state = "restarting"
    during = [split.arm_at(p).name for p in points]
    kept = [(b, d) for b, d in zip(before, during, strict=True) if b != "a"]
    assert all(b == d for b, d in kept) and len(kept) == 3000
    moved = [d for b, d in zip(before, during, strict=True) if b == "a"]
    assert len(moved) == 1000 and 300 <= moved.count("b") <= 366  # b:c = 1:2
    down.state = "ready"
    assert [split.arm_at(p).name for p in points] == before


TWO = "[{ref: default, weight: 1, name: a}, {ref: default, weight: 1, name: b}]"
BAD = [
    ("ab: [{ref: default, weight: 1}]", "models.0.ab: an A/B split needs at least 2 arms"),
    ("ab: [{ref: default, weight: 0, name: a}, {ref: default, weight: 1}]", "ab.0.weight"),
    ("ab: [{ref: default, weight: 1}, {ref: default, weight: 2}]", "arm names must be unique"),
    (f"ref: default, ab: {TWO}", "give only one of `ref`, `upstream`, `deployments`, `ab`"),
    (f"replicas: 2, ab: {TWO}", "(got ab and replicas)"),
    (f"sticky: always, ab: {TWO}", "models.0.sticky: Input should be 'user' or 'none'"),
]


@pytest.mark.parametrize(("entry", "expected"), BAD, ids=[
    "one-arm", "zero-weight", "same-names", "ab-and-ref", "ab-and-replicas", "bad-sticky"])  # fmt: skip
def test_bad_ab_config_names_the_field(tmp_path: Path, entry: str, expected: str) -> None:
    """In-process, through the loader and formatter the CLI uses (one CLI run below)."""
    from slmkit.config import load_config
    from slmkit.errors import ConfigError
    from slmkit.serve.config import ServeConfig

    path = tmp_path / "serve.yaml"
    path.write_text(f"models:\n  - {{id: support, {entry}}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ServeConfig)
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_bad_ab_config_is_one_line_error_of_slm_serve(slm, tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("models:\n  - id: support\n    ab:\n      - {ref: default, weight: -1}\n")
    line = one_line_error(slm("serve", "--config", str(path), "--port", "0"))
    assert f"{path}:4: models.0.ab.0.weight" in line, line


@needs_llama_server
def test_registry_arms_are_named_by_their_version(tmp_path: Path) -> None:
    """`@prod` (an alias) and `@v2` answer as `v1` and `v2`; two arms on one version are refused.
    The engines are built, not started."""
    from slmkit.errors import ServeError
    from slmkit.models import resolve_model
    from slmkit.registry.store import Registry
    from slmkit.serve.config import ServeConfig
    from slmkit.serve.server import build_engines

    gguf = resolve_model("default", prepare=False).gguf
    assert gguf is not None
    registry = Registry()  # under this test's SLM_HOME
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        copy = tmp_path / name / "model.gguf"
        try:
            os.link(gguf, copy)
        except OSError:  # another file system
            shutil.copy(gguf, copy)
        registry.register(copy, "model")
    registry.promote("v1", "prod")

    def split(*refs: str) -> ServeConfig:
        arms = [{"ref": ref, "weight": 1} for ref in refs]
        return ServeConfig.model_validate({"models": [{"id": "support", "ab": arms}]})

    engine = build_engines(split("@prod", "@v2"))["support"]
    assert [arm.name for arm in engine.arms] == ["v1", "v2"]  # type: ignore[attr-defined]
    with pytest.raises(
        ServeError, match=r"^models.0.ab: arms '@prod' and '@v1' are both version v1"
    ):
        build_engines(split("@prod", "@v1"))


def test_statistics_against_values_worked_by_hand() -> None:
    low, high = wilson_interval(8, 10) or (0.0, 0.0)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 0) is None
    # 30/50 against 20/50: pooled 0.5, se 0.1, z = 2
    assert two_proportion_p(30, 50, 20, 50) == pytest.approx(0.0455, abs=1e-4)
    assert two_proportion_p(5, 5, 5, 5) == 1.0
    assert sample_size(0.5) == 388  # 50% vs 60%, alpha 0.05 two-sided, power 0.8
    # no overlap of 5 and 5: U = 0, z = -12.5 / sqrt(25 * 11 / 12)
    assert mann_whitney_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(0.00902, abs=1e-5)
    # ties: rank sum 9, U = 3, variance 0.75 * (7 - 48 / 30)
    assert mann_whitney_p([1, 1, 2], [1, 2, 2]) == pytest.approx(0.45606, abs=1e-5)
