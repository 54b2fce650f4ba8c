"""`slm bench serve` against a real `slm serve default`: two concurrent streaming clients, a few
short requests, and a report whose latency and throughput fields agree with the server's own count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve_helpers import ServerProcess, needs_llama_server

pytestmark = needs_llama_server

KEY = "sk-bench-1"
CONFIG = {"llamacpp": {"ctx_size": 1024, "parallel": 2, "threads": 1}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("serve-bench")
    with ServerProcess(["default"], api_key=KEY, config=CONFIG, env={"SLM_HOME": str(home)}) as srv:
        yield srv


def bench(slm, server: ServerProcess, *args: str) -> dict:
    result = slm("bench", "serve", "--url", server.base_url + "/v1", "--json", *args, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_bench_serve_reports_latency_and_throughput(slm, server: ServerProcess) -> None:
    tokens_before = server.metric("slm_completion_tokens_total", model="default")
    ok_before = server.metric("slm_requests_total", model="default", status="200")
    report = bench(slm, server, "--api-key", KEY, "-n", "2", "--requests", "4", "--max-tokens", "6")
    assert (report["concurrency"], report["requests"], report["errors"]) == (2, 4, 0)
    assert report["first_error"] is None
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        p50, p95, p99 = (report[name][q] for q in ("p50", "p95", "p99"))
        assert 0 < p50 <= p95 <= p99, name
    assert report["ttft_ms"]["p50"] < report["e2e_ms"]["p50"]
    assert report["tokens_per_s"] > 0 and report["requests_per_s"] > 0 and report["duration_s"] > 0
    # the bench counted what the server generated, from the usage of each stream
    assert 4 < report["output_tokens"] <= 4 * 6
    tokens = server.metric("slm_completion_tokens_total", model="default") - tokens_before
    assert tokens == report["output_tokens"]
    assert server.metric("slm_requests_total", model="default", status="200") - ok_before == 4


def test_bench_serve_counts_failed_requests_as_errors(slm, server: ServerProcess) -> None:
    report = bench(slm, server, "-n", "2", "--requests", "2", "--max-tokens", "4")  # no key
    assert (report["requests"], report["errors"], report["output_tokens"]) == (2, 2, 0)
    assert report["first_error"].startswith("HTTP 401")
    assert report["ttft_ms"]["p50"] is None and report["tokens_per_s"] == 0


def test_bench_serve_prints_a_table(slm, server: ServerProcess, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Say hello.\n\nName a color.\n")
    result = slm(
        "bench", "serve", "--url", server.base_url + "/v1", "--api-key", KEY,
        "-n", "2", "--requests", "2", "--max-tokens", "4", "--prompts", str(prompts),
        env={"COLUMNS": "200"}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for row in ("TTFT (ms)", "TPOT (ms)", "ITL (ms)", "end-to-end (ms)"):
        assert row in result.stdout
    assert "2 requests (2 concurrent), 0 errors" in result.stdout
