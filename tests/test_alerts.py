"""Alert delivery from a real `slm serve`: a model whose upstream is a closed loopback port fails
every request, the error-rate rule fires and the change is POSTed to a loopback webhook receiver
(which refuses the first POST: it is retried), then resolves once the window is clean. The healthy
embedded model trips a p95-latency rule. Rule states (for_s, escalation share) are checked on the
watcher itself, and bad alert config is one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from alert_helpers import WebhookReceiver, write_set
from serve_helpers import ServerProcess, needs_llama_server
from slmkit.child_process import free_port

TOKEN = "hook-secret-5be1c0"
HI = [{"role": "user", "content": "hi"}]
FIELDS = {
    "status",
    "rule",
    "kind",
    "message",
    "value",
    "threshold",
    "model",
    "started_at",
    "ended_at",
    "server",
}


@pytest.fixture(scope="module")
def hook():
    with WebhookReceiver(statuses=[500]) as receiver:  # the first POST fails: retried
        yield receiver


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("alerts-home")


@pytest.fixture(scope="module")
def gateway(hook: WebhookReceiver, home: Path):
    config = {
        "models": [{"id": "broken", "upstream": {"url": f"http://127.0.0.1:{free_port()}/v1"}}],
        "alerts": [
            {
                "name": "errors",
                "error_rate_above": 0.5,
                "window_s": 2,
                "min_requests": 3,
                "model": "broken",
            },
            {
                "name": "slow",
                "p95_latency_above_s": 0.001,
                "window_s": 30,
                "min_requests": 2,
                "model": "default",
            },
        ],
        "alerting": {
            "check_interval_s": 0.3,
            "server": "gw-test",
            "webhook": {
                "url": hook.url,
                "bearer_env": "ALERT_TOKEN",
                "headers": {"X-Team": "ml-ops"},
                "backoff_s": 0.2,
            },
        },
        "llamacpp": {"ctx_size": 1024, "parallel": 2, "threads": 1},
        "audit": {"log_text": True},  # rated answers become the monitor's feedback set
        # the server's own monitor: a round at start on a set the model answers, then hourly
        "monitor": {
            "model": "default",
            "evals": [str(home / "served-set.jsonl")],
            "max_tokens": 16,
        },
    }
    write_set(home / "served-set.jsonl")
    env = {"SLM_HOME": str(home), "ALERT_TOKEN": TOKEN}
    with ServerProcess(["default"], config=config, env=env) as srv:
        yield srv


@pytest.mark.slow
@needs_llama_server
def test_error_rate_fires_then_resolves_through_the_webhook(
    gateway: ServerProcess, hook: WebhookReceiver
) -> None:
    sent = []
    for _ in range(4):
        sent.append(time.time())
        r = gateway.post("/v1/chat/completions", {"model": "broken", "messages": HI})
        assert r.status_code >= 500
    firing = hook.wait_for(lambda b: b["rule"] == "errors" and b["status"] == "firing")
    assert set(firing) == FIELDS
    assert firing["kind"] == "error_rate" and firing["value"] == 1.0 and firing["threshold"] == 0.5
    assert firing["server"] == "gw-test" and firing["ended_at"] is None
    assert firing["model"] == "broken"
    assert "error rate 100.0%" in firing["message"]
    headers, _, _ = next(p for p in hook.posts if p[1]["rule"] == "errors")
    assert headers["Authorization"] == f"Bearer {TOKEN}" and headers["X-Team"] == "ml-ops"
    # the receiver refuses the first payload it gets (this rule's, or another test's): that
    # payload is posted again and delivered, once
    refused = [b for _, b, status in hook.posts if status == 500]
    assert len(refused) == 1 and hook.bodies().count(refused[0]) == 1, hook.posts
    assert gateway.metric("slm_alert_deliveries_total", outcome="retried") >= 1
    assert gateway.metric("slm_alert_firing", rule="errors") == 1

    resolved = hook.wait_for(lambda b: b["rule"] == "errors" and b["status"] == "resolved")
    assert resolved["started_at"] == firing["started_at"]
    # resolved once fewer than min_requests (3) failures are left in the 2 s window
    assert resolved["ended_at"] >= sent[1] + 2
    assert gateway.metric("slm_alert_firing", rule="errors") == 0
    log = gateway.log()
    assert "ALERT errors: error rate 100.0%" in log and "RESOLVED errors:" in log
    assert TOKEN not in log


@pytest.mark.slow
@needs_llama_server
def test_p95_latency_rule_fires_for_the_healthy_model(
    gateway: ServerProcess, hook: WebhookReceiver
) -> None:
    client = gateway.client()
    for _ in range(2):
        answer = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4
        )
        assert answer.choices[0].message.content is not None
    slow = hook.wait_for(lambda b: b["rule"] == "slow" and b["status"] == "firing")
    assert slow["kind"] == "p95_latency" and slow["model"] == "default"
    assert slow["value"] > 0.001 and "p95 latency" in slow["message"]
    assert gateway.metric("slm_alert_deliveries_total", outcome="delivered") >= 1


def test_for_s_and_escalation_share_on_the_watcher(capsys: pytest.CaptureFixture[str]) -> None:
    from slmkit.serve.alert_config import AlertRule
    from slmkit.serve.alerts import AlertWatcher
    from slmkit.serve.metrics import GatewayMetrics

    sent: list[dict] = []
    rule = AlertRule(escalation_share_above=0.25, window_s=60, min_requests=4, for_s=10)
    watcher = AlertWatcher([rule], GatewayMetrics().alerts, notify=sent.append, server="s")
    for escalated in (True, True, False, False):
        watcher.record(200, 0.1, escalated, "support")
    now = time.time()
    assert rule.name == "escalation-share"
    assert watcher.check(now) == [] and sent == []  # true, but not for 10 s yet
    assert watcher.check(now + 5) == [] and sent == []
    [alert] = watcher.check(now + 11)
    assert alert.value == 0.5 and "2 of 4 requests" in alert.message
    assert [s["status"] for s in sent] == ["firing"] and sent[0]["started_at"] == now + 11
    watcher.check(now + 12)
    assert len(sent) == 1  # still firing: no second POST
    assert watcher.check(now + 100) == []  # the window emptied
    assert [s["status"] for s in sent] == ["firing", "resolved"]
    assert sent[1]["ended_at"] == now + 100
    err = capsys.readouterr().err
    assert "ALERT escalation-share" in err and "RESOLVED escalation-share" in err


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"alerts": [{"error_rate_above": 0.1, "p95_latency_above_s": 2}]},
            "alerts.0: an alert rule has one threshold: give only one of error_rate_above and p95_latency_above_s",
        ),
        ({"alerting": {"webhook": {"url": "ftp://hook"}}}, "alerting.webhook.url: "),
        ({"alerting": {"check_interval_s": 0}}, "alerting.check_interval_s: "),
        ({"monitor": {"model": "m"}}, "monitor: give eval sets (`evals`) or `feedback: true`"),
        ({"monitor": {"model": "m", "feedback": True, "threshold": 0}}, "monitor.threshold: "),
    ],
)
def test_bad_alert_config_is_one_line(config: dict, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    from slmkit.config import load_config
    from slmkit.errors import ConfigError
    from slmkit.monitor.serve_section import MonitoredServeConfig

    with pytest.raises(ConfigError) as info:
        load_config(path, MonitoredServeConfig, [])
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_unset_bearer_variable_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """`slm serve` builds this sender before it starts anything: the line is its start-up error."""
    from slmkit.errors import ConfigError
    from slmkit.serve.alert_config import WebhookSettings
    from slmkit.serve.webhook import WebhookSender

    monkeypatch.delenv("NO_SUCH_VAR_9", raising=False)
    settings = WebhookSettings(url="http://127.0.0.1:9/hook", bearer_env="NO_SUCH_VAR_9")
    with pytest.raises(ConfigError) as info:
        WebhookSender(settings)
    assert str(info.value) == (
        "alerting.webhook.bearer_env: environment variable NO_SUCH_VAR_9 is not set; "
        "export it before starting"
    )


def test_webhook_payload_reaches_a_flaky_receiver_after_backoff() -> None:
    """Two server errors, then accepted: three attempts, the waits doubling (0.2 s then 0.4 s)."""
    import asyncio

    from slmkit.serve.alert_config import WebhookSettings
    from slmkit.serve.metrics import GatewayMetrics
    from slmkit.serve.webhook import WebhookSender

    metrics = GatewayMetrics()
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    with WebhookReceiver(statuses=[503, 500]) as receiver:
        settings = WebhookSettings(url=receiver.url, backoff_s=0.2, retries=2)
        sender = WebhookSender(settings, metrics.alert_deliveries, sleep=record)
        assert asyncio.run(sender.deliver({"rule": "r", "status": "firing"}))
        assert [status for _, _, status in receiver.posts] == [503, 500, 200]
    assert waits == [0.2, 0.4]
    assert metrics.alert_deliveries.labels("retried")._value.get() == 2
    assert metrics.alert_deliveries.labels("delivered")._value.get() == 1
    with WebhookReceiver(statuses=[500, 500]) as receiver:
        sender = WebhookSender(
            WebhookSettings(url=receiver.url, backoff_s=0, retries=1), metrics.alert_deliveries
        )
        assert not asyncio.run(sender.deliver({"rule": "r", "status": "firing"}))
    assert metrics.alert_deliveries.labels("failed")._value.get() == 1


def test_a_refused_payload_is_not_posted_again_but_a_busy_receiver_is() -> None:
    import asyncio

    from slmkit.serve.alert_config import WebhookSettings
    from slmkit.serve.webhook import WebhookSender

    for statuses, posts, delivered in (([400], 1, False), ([429, 408], 3, True)):
        with WebhookReceiver(statuses=list(statuses)) as receiver:
            settings = WebhookSettings(url=receiver.url, backoff_s=0, retries=3)
            sent = asyncio.run(WebhookSender(settings).deliver({"rule": "r", "status": "firing"}))
            assert (len(receiver.posts), sent) == (posts, delivered), statuses


def test_stopping_delivers_what_is_queued_and_a_failing_delivery_keeps_the_queue_going() -> None:
    import asyncio

    from slmkit.serve.alert_config import WebhookSettings
    from slmkit.serve.metrics import GatewayMetrics
    from slmkit.serve.webhook import WebhookSender

    metrics = GatewayMetrics()
    with WebhookReceiver() as receiver:
        sender = WebhookSender(WebhookSettings(url=receiver.url), metrics.alert_deliveries)
        real_deliver = sender.deliver

        async def deliver(payload: dict[str, Any], client: Any = None) -> bool:
            if payload["rule"] == "bug":
                raise ValueError("a bug in one delivery")
            return await real_deliver(payload, client)

        sender.deliver = deliver  # type: ignore[method-assign]

        async def run() -> None:
            sender.start()
            for rule in ("a", "bug", "b", "c"):
                sender.send({"rule": rule, "status": "firing"})
            await sender.stop()  # at once: the queue is still full

        asyncio.run(run())
        assert [body["rule"] for body in receiver.bodies()] == ["a", "b", "c"]
    assert metrics.alert_deliveries.labels("delivered")._value.get() == 3
    assert metrics.alert_deliveries.labels("failed")._value.get() == 1


def monitor(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "slmkit.cli", "monitor", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.slow
@needs_llama_server
def test_drift_fires_with_the_retrain_advice_and_resolves(
    gateway: ServerProcess, home: Path, tmp_path: Path
) -> None:
    question = [{"role": "user", "content": "What is the capital of Japan?"}]
    liked = gateway.client().chat.completions.create(
        model="default", messages=question, max_tokens=16, temperature=0
    )
    assert gateway.post("/v1/feedback", {"id": liked.id, "rating": 1}).status_code == 200
    evalset, state = tmp_path / "held-out.jsonl", tmp_path / "state.json"
    audit = home / "serve" / "audit.db"
    common = ["--url", gateway.base_url + "/v1", "-m", "default", "--eval", str(evalset)]
    common += ["--feedback-audit", str(audit), "--since", "1d"]
    common += ["--state", str(state), "--max-tokens", "16", "--once"]
    with WebhookReceiver() as hook:
        common += ["--webhook", hook.url]
        write_set(evalset)
        first = monitor(*common, "--json", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        row, feedback = json.loads(first.stdout)["sets"]
        assert row["status"] == "baseline" and row["value"] > 0 and row["metric"] == "fact_recall"
        # the liked answer is the reference of the feedback set: asked again, much the same
        assert feedback["name"] == "feedback" and feedback["items"] == 1
        assert feedback["metric"] == "rouge_l" and feedback["value"] > 0.5
        assert json.loads(state.read_text())["baseline"]["held-out"]["value"] == row["value"]

        write_set(evalset, wrong=True)
        drifted = monitor(*common, cwd=tmp_path)
        assert drifted.returncode == 0, drifted.stderr
        assert "drift" in drifted.stdout and "-100%" in drifted.stdout
        [alert] = hook.bodies()
        assert alert["status"] == "firing" and alert["rule"] == "drift:held-out"
        assert alert["kind"] == "drift" and alert["value"] == 0.0 and alert["threshold"] == 0.15
        assert alert["model"] == "default" and alert["ended_at"] is None
        assert "slm feedback export --since " in alert["message"]
        assert "--to sft -o feedback.jsonl" in alert["message"]
        assert "slm run RECIPE" in alert["message"] and f"--audit {audit}" in alert["message"]
        assert "feedback " in drifted.stdout and "drift:feedback" not in drifted.stderr
        assert "ALERT drift:held-out" in drifted.stderr

        write_set(evalset)
        recovered = monitor(*common, cwd=tmp_path)
        assert recovered.returncode == 0, recovered.stderr
        statuses = [(b["status"], b["rule"]) for b in hook.bodies()]
        assert statuses == [("firing", "drift:held-out"), ("resolved", "drift:held-out")]
        resolved = hook.bodies()[1]
        assert resolved["started_at"] == alert["started_at"] and resolved["ended_at"] > 0
    assert json.loads(state.read_text())["firing"] == {}
    # the monitor's questions are tagged in the audit log; the user's question is not
    import sqlite3

    deadline = time.monotonic() + 30
    while True:  # the audit writer is a background thread
        with sqlite3.connect(audit) as conn:
            tagged = conn.execute(
                "SELECT COUNT(*) FROM requests WHERE source = 'monitor'"
            ).fetchone()[0]
            own = conn.execute("SELECT source FROM requests WHERE id = ?", (liked.id,)).fetchone()
        if tagged >= 9 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert tagged >= 9 and own == (None,)  # 3 rounds of 2 questions + 1 feedback item each


@pytest.mark.slow
@needs_llama_server
def test_the_servers_own_monitor_round_sets_a_baseline(gateway: ServerProcess, home: Path) -> None:
    state = home / "monitor" / "default.json"
    deadline = time.monotonic() + 60
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    baseline = json.loads(state.read_text())["baseline"]["served-set"]
    assert baseline["metric"] == "fact_recall" and baseline["items"] == 2 and baseline["value"] > 0
    assert "monitor: served-set fact_recall" in gateway.log()


def test_the_watcher_keeps_checking_after_a_check_fails() -> None:
    """A bug in one evaluation is logged; the next rounds still run (the loop does not die)."""
    import asyncio

    from slmkit.serve.alerts import AlertWatcher
    from slmkit.serve.metrics import GatewayMetrics

    rounds: list[int] = []

    class Flaky(AlertWatcher):
        def check(self, now: float | None = None, windows: Any = None) -> list[Any]:
            rounds.append(len(rounds))
            if len(rounds) == 1:
                raise ZeroDivisionError("a bug in the first round")
            return []

    watcher = Flaky([], GatewayMetrics().alerts, interval_s=0.01)

    async def run() -> None:
        watcher.start()
        for _ in range(500):
            if len(rounds) >= 3:
                break
            await asyncio.sleep(0.01)
        await watcher.stop()

    asyncio.run(run())
    assert len(rounds) >= 3


def test_a_check_reads_only_the_windows_requests_and_forgets_older_ones() -> None:
    from slmkit.serve.alert_config import AlertRule
    from slmkit.serve.alerts import AlertWatcher, _Request
    from slmkit.serve.metrics import GatewayMetrics

    rule = AlertRule(name="errors", error_rate_above=0.5, window_s=60, min_requests=1)
    watcher = AlertWatcher([rule], GatewayMetrics().alerts)
    now = 1_000_000.0
    for i in range(50_000):  # an hour ago: all failures, outside every window
        watcher._recent.append(_Request(now - 3600 + i * 1e-3, True, None, False, None))
    for _ in range(10):
        watcher._recent.append(_Request(now - 5, False, 0.1, False, None))
    assert watcher.check(now) == []  # the old failures are not in the 60 s window
    assert len(watcher._recent) == 10  # and are no longer kept
    window = watcher.window(rule, now)
    assert (window.requests, window.failures, window.answered) == (10, 0, 10)
