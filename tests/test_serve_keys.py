"""Per-key limits on a real `slm serve default`: named keys from the file and the environment, rpm /
tpm / daily-token limits answered with 429 + Retry-After (the openai client raises RateLimitError),
other keys unaffected, usage per key name in /metrics and `slm logs keys`, key values never
stored or exported, and bad key config refused in one line. The window arithmetic runs on a fake
clock below."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import openai
import pytest

from serve_helpers import ServerProcess, needs_llama_server
from slmkit.serve.audit import key_id
from slmkit.serve.key_limits import KeyLimits, ServedKey
from slmkit.serve.metrics import GatewayMetrics

VALUES = {
    "TEAM_A_KEY": "sk-team-a-0001",
    "TEAM_C_KEY": "sk-team-c-0003",
    "FREE_KEY": "sk-free-0004",
    "TEAM_D_KEY": "sk-team-d-0006",
}
LITERAL = "sk-team-b-0002"
PLAIN = "sk-plain-0005"  # an unnamed --api-key: no limits, named by its hash
CONFIG = {
    "llamacpp": {"ctx_size": 1024, "parallel": 2, "threads": 1},
    "keys": [
        {"name": "team-a", "key_env": "TEAM_A_KEY", "rpm": 2},
        {"name": "team-b", "key": LITERAL, "tpm": 1},
        {"name": "team-c", "key_env": "TEAM_C_KEY", "daily_tokens": 1},
        {"name": "free", "key_env": "FREE_KEY"},
        # each test's limited key is its own: the windows are a minute (or a day) long, and the
        # tests must pass in any order
        {"name": "team-d", "key_env": "TEAM_D_KEY", "rpm": 2},
    ],
}
SAY_HI = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-keys-home")


@pytest.fixture(scope="module")
def server(home: Path):
    env = {"SLM_HOME": str(home), **VALUES}
    with ServerProcess(["default"], api_key=PLAIN, config=CONFIG, env=env) as srv:
        yield srv


def client(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=120)


def ask(server: ServerProcess, key: str, **kwargs):
    return client(server, key).chat.completions.create(
        model="default", messages=SAY_HI, max_tokens=2, temperature=0, **kwargs
    )


@needs_llama_server
def test_rpm_limit_answers_429_with_retry_after(server: ServerProcess) -> None:
    ask(server, VALUES["TEAM_A_KEY"])
    ask(server, VALUES["TEAM_A_KEY"])
    with pytest.raises(openai.RateLimitError) as refused:
        ask(server, VALUES["TEAM_A_KEY"])
    error = refused.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert error.type == "requests" and "team-a" in error.message and "Limit 2" in error.message
    assert 1 <= int(error.response.headers["Retry-After"]) <= 60
    raw = server.post(
        "/v1/completions",
        {"model": "default", "prompt": "Hi", "max_tokens": 1},
        headers={"Authorization": f"Bearer {VALUES['TEAM_A_KEY']}"},
    )
    assert raw.status_code == 429 and set(raw.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    assert server.metric("slm_key_rejections_total", key="team-a", limit="rpm") == 2
    assert server.metric("slm_key_requests_total", key="team-a") == 2


@needs_llama_server
def test_tpm_counts_streamed_usage_and_then_refuses(server: ServerProcess) -> None:
    stream = client(server, LITERAL).chat.completions.create(
        model="default",
        messages=SAY_HI,
        max_tokens=3,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage].pop()
    deadline = time.monotonic() + 5  # counted when the stream closes, just after its last event
    while server.metric("slm_key_tokens_total", key="team-b") < usage.total_tokens:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert server.metric("slm_key_tokens_total", key="team-b") == usage.total_tokens
    assert server.metric("slm_key_tokens_total", key="team-b", kind="completion") == 3
    with pytest.raises(openai.RateLimitError) as refused:
        ask(server, LITERAL)
    assert refused.value.type == "tokens" and f"Used {usage.total_tokens}." in refused.value.message
    assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 60


@needs_llama_server
def test_daily_budget_refuses_until_utc_midnight(server: ServerProcess) -> None:
    reply = ask(server, VALUES["TEAM_C_KEY"])
    assert reply.usage.total_tokens > 1  # the budget of 1 token is now spent
    before = time.time()
    with pytest.raises(openai.RateLimitError) as refused:
        ask(server, VALUES["TEAM_C_KEY"])
    to_midnight = 86_400 - before % 86_400
    retry_after = int(refused.value.response.headers["Retry-After"])
    assert abs(retry_after - to_midnight) <= 5 and "TPD" in refused.value.message
    assert server.metric("slm_key_rejections_total", key="team-c", limit="daily_tokens") == 1


@needs_llama_server
def test_keys_under_their_limits_are_unaffected(server: ServerProcess) -> None:
    with pytest.raises(openai.RateLimitError):  # team-d gets over its rpm
        for _ in range(3):
            ask(server, VALUES["TEAM_D_KEY"])
    free = server.metric("slm_key_requests_total", key="free")
    for key in (VALUES["FREE_KEY"], PLAIN, VALUES["FREE_KEY"], VALUES["FREE_KEY"]):
        assert ask(server, key).choices[0].finish_reason in ("length", "stop")
    assert server.metric("slm_key_requests_total", key="free") == free + 3
    assert server.metric("slm_key_rejections_total", key="free") == 0
    with pytest.raises(openai.AuthenticationError):
        ask(server, "sk-not-a-key")


@needs_llama_server
def test_usage_per_key_name_and_no_key_value_anywhere(
    server: ServerProcess, home: Path, slm
) -> None:
    ask(server, PLAIN)
    reply = ask(server, VALUES["FREE_KEY"])
    db = home / "serve" / "audit.db"
    deadline = time.monotonic() + 10
    conn = sqlite3.connect(db)
    while time.monotonic() < deadline:  # the audit writer is a background thread
        if conn.execute("SELECT 1 FROM requests WHERE id = ?", (reply.id,)).fetchone():
            break
        time.sleep(0.1)
    assert conn.execute("SELECT key_id FROM requests WHERE id = ?", (reply.id,)).fetchone() == (
        "free",
    )
    dump = "\n".join(str(row) for row in conn.iterdump())
    conn.close()
    metrics = server.get("/metrics").text
    for value in [*VALUES.values(), LITERAL, PLAIN]:
        assert value not in dump and value not in metrics and value not in server.log()
    assert 'slm_key_requests_total{key="free"}' in metrics
    assert f'slm_key_requests_total{{key="{key_id(PLAIN)}"}}' in metrics

    shown = slm("logs", "keys", "--db", str(db), "--json", env={"SLM_HOME": str(home)})
    assert shown.returncode == 0, shown.stderr
    by_key = {row["key"]: row for row in json.loads(shown.stdout)}
    assert {"free", key_id(PLAIN)} <= set(by_key)  # and the keys the other tests used so far
    for name, row in by_key.items():  # audit == /metrics
        admitted = server.metric("slm_key_requests_total", key=name)
        rejected = server.metric("slm_key_rejections_total", key=name)
        assert row["rejected"] == rejected, name
        assert row["requests"] == admitted + rejected, name
        assert row["tokens"] == server.metric("slm_key_tokens_total", key=name), name
    assert by_key["free"]["rejected"] == 0
    table = slm("logs", "keys", "--db", str(db), env={"SLM_HOME": str(home)})
    assert "free" in table.stdout and "429s" in table.stdout


@pytest.mark.parametrize(
    ("yaml_text", "env", "expected"),
    [
        (
            "keys:\n  - name: team-a\n    key: sk-1\n    key_env: TEAM_A_KEY\n",
            {},
            "serve.yaml:2: keys.0: give the key either as `key` or as `key_env`",
        ),
        ("keys:\n  - name: team-a\n    key: sk-1\n    rpm: 0\n", {}, "serve.yaml:4: keys.0.rpm:"),
        (
            "keys:\n  - {name: a, key: sk-1}\n  - {name: a, key: sk-2}\n",
            {},
            "serve.yaml:1: keys: duplicate key names: a",
        ),
        (
            "keys:\n  - {name: team-a, key_env: NO_SUCH_KEY_VAR}\n",
            {},
            "keys.0.key_env: environment variable NO_SUCH_KEY_VAR is not set",
        ),
        (
            "keys:\n  - {name: a, key: sk-1}\n  - {name: b, key_env: B_KEY}\n",
            {"B_KEY": "sk-1"},
            "keys.1: key 'b' has the same value as key 'a'",
        ),
    ],
    ids=["key-and-key_env", "rpm-zero", "duplicate-names", "unset-env", "repeated-value"],
)
def test_bad_key_config_is_one_line_error(
    slm, tmp_path: Path, yaml_text: str, env: dict[str, str], expected: str
) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml_text)
    result = slm("serve", "default", "--config", str(path), "--port", "0", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], lines
    assert "sk-1" not in result.stderr


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0
        self.wall = 86_400.0 * 20_000 + 3_600.0  # 01:00 UTC

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds


async def _no_count() -> int | None:
    return None


def test_sliding_windows_and_retry_after_on_a_fake_clock() -> None:
    import asyncio

    from slmkit.serve.api_errors import ApiError

    clock = FakeClock()
    limits = KeyLimits(
        [ServedKey("k", "v", rpm=2, tpm=100, daily_tokens=1_000)],
        GatewayMetrics(),
        clock=lambda: clock.now,
        wall_clock=lambda: clock.wall,
    )

    def admit(estimate: int = 10):
        return asyncio.run(limits.admit("k", _no_count, estimate))

    first = admit()
    clock.tick(20)
    second = admit()
    with pytest.raises(ApiError) as rpm:
        admit()
    assert rpm.value.type == "requests" and rpm.value.headers["Retry-After"] == "40"
    limits.settle(first, 30, 50)  # 80 tokens at t=20
    clock.tick(5)
    limits.settle(second, None, 25)  # 35 at t=25: the reservation stands in for the prompt
    clock.tick(36)  # the first request left the rpm window; 115 tokens in the tpm window
    with pytest.raises(ApiError) as tpm:
        admit()
    assert tpm.value.type == "tokens" and tpm.value.headers["Retry-After"] == "19"
    clock.tick(19)  # 80 tokens left the window: 35 < 100
    third = admit(estimate=900)  # reserves 900: concurrent requests see it
    with pytest.raises(ApiError) as tpm_reserved:
        admit()
    assert "Used 935" in tpm_reserved.value.message
    limits.settle(third, 900, 100)  # 1115 tokens today
    clock.tick(120)
    with pytest.raises(ApiError) as daily:
        admit()
    to_midnight = 86_400 - clock.wall % 86_400
    assert daily.value.headers["Retry-After"] == str(int(to_midnight))
    clock.tick(to_midnight)  # 00:00 UTC: a new day
    assert admit() is not None
    assert limits.metrics.key_rejections.labels("k", "tpm")._value.get() == 2
    assert asyncio.run(limits.admit(None, _no_count, 1)) is None  # no key, no limits


def test_a_restart_keeps_the_days_usage(tmp_path: Path) -> None:
    from slmkit.serve.audit import AuditLog, AuditRecord
    from slmkit.serve.config import AuditSettings
    from slmkit.serve.logs import tokens_today_by_key

    log = AuditLog(AuditSettings(path=tmp_path / "audit.db"))
    now = time.time()
    yesterday = now - now % 86_400 - 10
    for i, (ts, tokens) in enumerate([(yesterday, 500), (now - 1, 40), (now - 1, 2)]):
        log.record(
            AuditRecord(
                id=f"r{i}",
                ts=ts,
                key_id="team-a",
                model="default",
                endpoint="chat",
                status=200,
                prompt_tokens=tokens,
                completion_tokens=1,
            )
        )
    log.flush()
    log.close()
    assert tokens_today_by_key(tmp_path / "audit.db", now) == {"team-a": 44}


def test_key_values_are_not_in_the_printed_config_of_env_keys(slm, tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("keys:\n  - {name: team-a, key_env: TEAM_A_KEY, rpm: 60, tpm: 20000}\n")
    shown = slm("serve", "--config", str(path), "--print-config", env={"TEAM_A_KEY": "sk-zz-9"})
    assert shown.returncode == 0 and "key_env: TEAM_A_KEY" in shown.stdout
    assert "sk-zz-9" not in shown.stdout
