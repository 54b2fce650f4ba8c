"""The board's Monitor tab: a running `slm serve` watched through its /metrics (rates and latency
quantiles between two scrapes) and its audit log; an unreachable URL or a wrong key is one line."""

from __future__ import annotations

import pytest

from serve_helpers import ServerProcess, needs_llama_server
from slmkit.child_process import free_port
from slmkit.errors import ServeError
from slmkit.serve.metrics import GatewayMetrics
from slmkit.serve.metrics_reader import (
    fetch_metrics,
    gateway_root,
    histogram_quantile,
    parse_metrics,
    rates,
)
from ui_helpers import needs_browser, open_tab, screenshot

API_KEY = "sk-monitor-test"


def _gateway_text(ok: int, failed: int, latency_s: float, tokens: int) -> str:
    metrics = GatewayMetrics()
    metrics.requests.labels("chat", "default", "200").inc(ok)
    metrics.requests.labels("chat", "default", "503").inc(failed)
    metrics.requests.labels("chat", "default", "400").inc(2)  # a client mistake: not a failure
    for _ in range(ok):
        metrics.latency.labels("chat", "default").observe(latency_s)
    metrics.completion_tokens.labels("default").inc(tokens)
    metrics.in_flight.labels("default").set(3)
    metrics.alerts.labels("error-rate").set(1)
    metrics.engine_up.labels("default").set(1)
    return metrics.render().decode()


def test_metrics_of_a_gateway_read_as_totals_and_rates() -> None:
    before = parse_metrics(_gateway_text(ok=4, failed=0, latency_s=0.3, tokens=40), ts=100.0)
    after = parse_metrics(_gateway_text(ok=12, failed=2, latency_s=0.3, tokens=200), ts=110.0)
    assert (after.requests, after.failures, after.completion_tokens) == (16, 2, 200)
    assert (after.in_flight, after.firing, after.engines_up) == (
        3,
        ["error-rate"],
        {"default": True},
    )
    step = rates(before, after)
    assert step.requests_per_s == pytest.approx(1.0)  # 10 more requests in 10 s
    assert step.error_rate == pytest.approx(0.2)
    assert step.tokens_per_s == pytest.approx(16.0)
    # 8 new answers, all in the (0.25, 0.5] bucket: linear interpolation inside it
    assert step.latency_p50 == pytest.approx(0.375)
    assert step.latency_p99 == pytest.approx(0.4975)
    fresh = parse_metrics(_gateway_text(ok=1, failed=0, latency_s=0.3, tokens=5), ts=120.0)
    restarted = rates(after, fresh)  # counters went down: the gateway restarted, count from 0
    assert restarted.requests_per_s == pytest.approx(0.3)  # its 3 requests in 10 s


def test_histogram_quantile_is_prometheus_interpolation() -> None:
    buckets = {0.1: 2.0, 0.5: 6.0, 1.0: 8.0, float("inf"): 10.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * 3 / 4)
    assert histogram_quantile(0.99, buckets) == 1.0  # in +Inf: the largest finite bound
    assert histogram_quantile(0.5, {float("inf"): 0.0}) is None


def test_an_unreachable_gateway_is_one_line() -> None:
    port = free_port()
    assert gateway_root(f"127.0.0.1:{port}/v1/") == f"http://127.0.0.1:{port}"
    with pytest.raises(ServeError, match=rf"cannot reach http://127.0.0.1:{port}/metrics"):
        fetch_metrics(f"http://127.0.0.1:{port}")


@needs_browser
@pytest.mark.browser
def test_an_unreachable_monitor_url_shows_the_error_line(board, page) -> None:
    port = free_port()
    open_tab(page, board, "Monitor")
    page.locator("#monitor-url input").fill(f"http://127.0.0.1:{port}")
    page.locator("#monitor-connect").click()
    status = page.locator("#monitor-status .slm-error")
    status.wait_for()
    assert status.inner_text().startswith(f"error: cannot reach http://127.0.0.1:{port}/metrics")
    assert "Traceback" not in page.content()


@needs_browser
@needs_llama_server
@pytest.mark.browser
def test_monitor_shows_the_requests_of_a_running_gateway(board, page) -> None:
    from playwright.sync_api import expect

    home = board.place("gateway")  # its own SLM_HOME: the Chat tab's requests are not counted
    with ServerProcess(["default"], api_key=API_KEY, env={"SLM_HOME": str(home)}) as server:
        client = server.client()

        def ask(n: int) -> None:
            for i in range(n):
                client.chat.completions.create(
                    model="default",
                    messages=[{"role": "user", "content": f"Say a number: {i}"}],
                    max_tokens=4,
                    temperature=0,
                )

        ask(3)
        open_tab(page, board, "Monitor")
        page.locator("#monitor-url input").fill(server.base_url + "/v1")
        page.locator("#monitor-key input").fill("wrong-key")
        page.locator("#monitor-connect").click()
        page.locator("#monitor-status .slm-error").wait_for()
        assert "refused the API key (HTTP 401)" in page.locator("#monitor-status").inner_text()

        page.locator("#monitor-key input").fill(API_KEY)
        page.locator("#monitor-db input").fill(str(home / "serve" / "audit.db"))
        page.locator("#monitor-connect").click()
        page.locator("#monitor-status .slm-ok").wait_for()
        requests = page.locator("#monitor-summary [data-name='requests']")
        assert requests.inner_text().split("\n")[1] == "3"
        expect(page.locator("#monitor-requests")).to_contain_text("chatcmpl-")
        assert "last 300 s: 3 requests" in page.locator("#monitor-audit-status").inner_text()

        for seen in (4, 5, 6):  # while watched: each poll plots the rates since the last one
            ask(1)
            page.locator("#monitor-summary [data-name='requests']", has_text=str(seen)).wait_for()
        drawn = ".mark-line path[stroke][d*='L']"  # a coloured line through two points or more
        page.locator(f"#monitor-rps {drawn}").first.wait_for(state="attached")
        page.locator(f"#monitor-latency {drawn}").first.wait_for(state="attached")
        assert "no alert firing" in page.locator("#monitor-alerts").inner_text()
        screenshot(page, "monitor")
