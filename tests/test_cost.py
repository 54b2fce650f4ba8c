"""`slm cost`: the arithmetic against hand-computed numbers, the break-even volume, machines needed,
a profile measured from a real audit log, a real `slm bench serve --json` report, bad inputs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from serve_helpers import ServerProcess, needs_llama_server
from slmkit.cli import main
from slmkit.cost import CostConfig, estimate_cost
from slmkit.serve.audit import AuditLog, AuditRecord
from slmkit.serve.config import AuditSettings

PRICES = {"input_price": 1.0, "output_price": 4.0}
# The profile and machine the hand computation below is about.
PROFILE = {
    "requests_per_day": 43_200,  # 0.5 requests/s on average
    "prompt_tokens": 1000,
    "completion_tokens": 200,
    "peak_concurrency": 10,
    "latency_target": 5.0,
    "local_share": 0.75,
}
FLAGS = [
    "--requests-per-day", "43200", "--prompt-tokens", "1000", "--completion-tokens", "200",
    "--peak-concurrency", "10", "--latency-target", "5", "--local-share", "0.75",
    "--input-price", "1", "--output-price", "4",
]  # fmt: skip


def bench_report(path: Path, **changes: object) -> Path:
    """A report as `slm bench serve --json` writes it: 4 concurrent, 100 tokens/s, 1 request/s."""
    report = {
        "url": "http://127.0.0.1:8000/v1", "model": "default", "concurrency": 4, "requests": 32,
        "errors": 0, "duration_s": 32.0, "output_tokens": 3200, "tokens_per_s": 100.0,
        "requests_per_s": 1.0, "ttft_ms": {"p50": 300.0, "p95": 500.0, "p99": 700.0},
        "tpot_ms": {"p50": 15.0, "p95": 20.0, "p99": 25.0}, "itl_ms": {"p50": 15.0, "p95": 20.0,
        "p99": 25.0}, "e2e_ms": {"p50": 1800.0, "p95": 2500.0, "p99": 3000.0}, "first_error": None,
    }  # fmt: skip
    path.write_text(json.dumps({**report, **changes}))
    return path


def test_costs_match_a_hand_computation(tmp_path: Path) -> None:
    result = estimate_cost(
        CostConfig(**PROFILE, **PRICES, machine_price=1.0, bench=bench_report(tmp_path / "b.json"))
    )
    # API: 1000 x 1/1M + 200 x 4/1M = 0.0018 per request; x 43,200/day x 30 days = 2,332.80
    assert result.api_monthly == pytest.approx(2332.80)
    # a machine serves min(1.0 req/s, 100 tok/s / 200 tok = 0.5 req/s) = 0.5 req/s, 4 at once:
    # peak 10 -> ceil(10/4) = 3 machines; volume 0.5 req/s -> 1; so 3 x 1.00 x 24 h x 30 d = 2,160
    assert result.model.machine_rps == pytest.approx(0.5)
    assert result.machines == 3
    assert result.self_hosted_monthly == pytest.approx(2160.0)
    # hybrid: 75% local -> peak 7.5 -> 2 machines = 1,440, plus 25% of the API's 2,332.80 = 583.20
    assert result.machines_hybrid == 2
    assert result.hybrid_monthly == pytest.approx(2023.20)
    assert result.cheapest == "hybrid"
    # break-even: one machine (720/month) = API for 720 / (30 x 0.0018) = 13,333.3 requests/day,
    # within what one machine takes (4 concurrent x 43,200/10 = 17,280/day)
    assert result.model.requests_per_day_per_machine == pytest.approx(17_280)
    assert result.break_even_requests_per_day == pytest.approx(13_333.333, rel=1e-6)
    assert result.model.api(13_333.333) == pytest.approx(result.model.self_hosted(13_333.333))
    # latency of 200 tokens: p95 TTFT 0.5 s + 199 x p95 TPOT 0.02 s = 4.48 s <= 5 s
    assert result.latency_s == pytest.approx(4.48)
    assert result.meets_latency is True


def test_no_break_even_when_a_loaded_machine_costs_more_than_the_api(tmp_path: Path) -> None:
    bench = bench_report(tmp_path / "b.json")
    result = estimate_cost(CostConfig(**PROFILE, **PRICES, machine_price=2.0, bench=bench))
    # 1,440/month per machine; its 17,280 requests/day cost 17,280 x 30 x 0.0018 = 933.12 upstream
    assert result.break_even_requests_per_day is None
    assert (result.machines, result.self_hosted_monthly) == (3, pytest.approx(4320.0))
    assert result.cheapest == "api"


def test_machines_needed_when_the_volume_binds_and_latency_misses() -> None:
    config = CostConfig(
        requests_per_day=172_800,  # 2 requests/s
        prompt_tokens=0,
        completion_tokens=100,
        peak_concurrency=4,
        latency_target=10,
        **PRICES,
        machine_price=0.5,
        tokens_per_s=50,  # 0.5 requests/s of 100 tokens -> exactly 4 machines, not 5
        machine_concurrency=8,
        machine_latency=12,
    )
    result = estimate_cost(config)
    assert result.machines == 4
    assert result.self_hosted_monthly == pytest.approx(4 * 0.5 * 24 * 30)
    assert result.api_monthly == pytest.approx(172_800 * 30 * 100 * 4 / 1e6)
    assert result.meets_latency is False
    assert any("over the 10 s target" in note for note in result.notes)


def test_cli_prints_table_json_and_chart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = str(bench_report(tmp_path / "b.json"))
    args = ["cost", *FLAGS, "--machine-price", "1", "--bench", bench]
    main([*args, "-o", str(tmp_path / "out")])
    text = capsys.readouterr().out
    assert "2,332.80" in text and "2,160.00" in text and "2,023.20" in text
    assert "break-even: 13,333 requests/day" in text
    assert "meets the 5 s target" in text
    main([*args, "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["monthly"] == pytest.approx({"api": 2332.8, "self_hosted": 2160, "hybrid": 2023.2})
    assert (data["machines"], data["machines_hybrid"], data["meets_latency"]) == (3, 2, True)
    assert json.loads((tmp_path / "out" / "cost.json").read_text()) == data
    assert (tmp_path / "out" / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def write_audit_rows(db: Path, now: float) -> None:
    """Through the gateway's own writer: 4 answered requests in the last 2 days, 3 of them
    overlapping, plus a failed one and one older than the window."""
    log = AuditLog(AuditSettings(path=db))
    day_ago = now - 30 * 3600
    rows = [  # (ts, status, latency, prompt, completion)
        (day_ago, 200, 2.0, 100, 50),
        (day_ago + 1.0, 200, 2.0, 300, 150),
        (day_ago + 1.5, 200, 0.2, 200, 100),  # 3 in flight at once
        (now - 600, 200, 1.0, 400, 100),
        (now - 500, 500, 0.1, 999, 0),  # failed: not answered
        (now - 3 * 86_400, 200, 1.0, 999, 999),  # outside the 2-day window
    ]
    for i, (ts, status, latency, prompt, completion) in enumerate(rows):
        log.record(
            AuditRecord(
                id=f"chatcmpl-{i}", ts=ts, key_id=None, model="default", endpoint="chat",
                status=status, prompt_tokens=prompt, completion_tokens=completion, latency_s=latency,
            )
        )  # fmt: skip
    log.flush()
    log.close()


def test_profile_measured_from_an_audit_log(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    write_audit_rows(db, time.time())
    config = CostConfig(
        **PRICES, machine_price=1.0, bench=bench_report(tmp_path / "b.json"),
        audit_db=db, window_days=2, completion_tokens=200,
    )  # fmt: skip
    result = estimate_cost(config)
    assert result.audit is not None
    assert (result.audit.requests, result.audit.requests_per_day) == (4, 2.0)
    assert result.audit.prompt_tokens == 250  # (100 + 300 + 200 + 400) / 4
    assert result.audit.completion_tokens == 100  # (50 + 150 + 100 + 100) / 4
    assert result.audit.peak_concurrency == 3
    # the measured profile is used, except where a value was given explicitly
    assert (result.requests_per_day, result.model.prompt_tokens) == (2.0, 250)
    assert (result.model.completion_tokens, result.peak_concurrency) == (200, 3)
    assert result.profile_source == {
        "requests_per_day": "audit log", "prompt_tokens": "audit log",
        "completion_tokens": "given", "peak_concurrency": "audit log",
    }  # fmt: skip
    # 2 requests/day x 30 x (250 x 1 + 200 x 4)/1M
    assert result.api_monthly == pytest.approx(2 * 30 * 1050 / 1e6)


@needs_llama_server
def test_real_bench_report_and_the_servers_audit_log(slm, tmp_path: Path) -> None:
    home = tmp_path / "serve-home"
    config = {"llamacpp": {"ctx_size": 1024, "parallel": 2, "threads": 1}}
    with ServerProcess(["default"], config=config, env={"SLM_HOME": str(home)}) as server:
        bench = slm(
            "bench", "serve", "--url", server.base_url + "/v1", "--json",
            "-n", "2", "--requests", "4", "--max-tokens", "8", timeout=120,
        )  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    report = json.loads(bench.stdout)
    assert report["errors"] == 0
    (tmp_path / "bench.json").write_text(bench.stdout)
    result = slm(
        "cost", "--bench", str(tmp_path / "bench.json"), "--audit-db",
        str(home / "serve" / "audit.db"), "--window-days", "1", "--input-price", "0.15",
        "--output-price", "0.6", "--machine-price", "0.1", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["throughput"]["tokens_per_s"] == report["tokens_per_s"]
    assert data["throughput"]["concurrency"] == 2
    # the server logged the bench's 4 requests and the tokens the bench counted
    assert data["audit"]["requests"] == 4 and data["profile"]["requests_per_day"] == 4
    assert data["profile"]["completion_tokens"] == pytest.approx(report["output_tokens"] / 4)
    assert 1 <= data["profile"]["peak_concurrency"] <= 2
    assert data["machines"] == 1 and data["monthly"]["self_hosted"] == pytest.approx(0.1 * 24 * 30)


def bad(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    good = bench_report(tmp_path / "good.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    failed = bench_report(
        tmp_path / "failed.json", errors=32, tokens_per_s=0, first_error="HTTP 401"
    )
    empty_db = tmp_path / "empty.db"
    write_audit_rows(empty_db, time.time() - 30 * 86_400)  # every row a month old
    return {
        "missing bench": (["--bench", str(tmp_path / "nope.json")], "--bench: no such file"),
        "not a report": (["--bench", str(broken)], "--bench: .* is not a `slm bench serve"),
        "failed bench": (["--bench", str(failed)], "--bench: .* no successful request \\(HTTP 401"),
        "negative price": (["--bench", str(good), "--machine-price", "-1"], "--machine-price: "),
        "no throughput": ([], "--bench: give a `slm bench serve --json` report"),
        "both": (["--bench", str(good), "--tokens-per-s", "9"], "--tokens-per-s: give either"),
        "no concurrency": (["--tokens-per-s", "9"], "--machine-concurrency: needed"),
        "share": (["--bench", str(good), "--local-share", "1.5"], "--local-share: .*less than or"),
        "no audit db": (
            ["--bench", str(good), "--audit-db", str(tmp_path / "no.db")],
            "--audit-db: no audit log",
        ),
        "empty window": (
            ["--bench", str(good), "--audit-db", str(empty_db)],
            "--audit-db: no answered request in the last 7 days",
        ),
    }


BAD = [
    "missing bench", "not a report", "failed bench", "negative price", "no throughput", "both",
    "no concurrency", "share", "no audit db", "empty window",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_error_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    extra, expected = bad(tmp_path)[case]
    args = ["cost", "--input-price", "1", "--output-price", "4", *extra]
    if "--machine-price" not in extra:
        args += ["--machine-price", "1"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.match(f"error: {expected}", err), err


def test_a_missing_price_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = str(bench_report(tmp_path / "b.json"))
    with pytest.raises(SystemExit) as exit_info:
        main(["cost", "--bench", bench, "--output-price", "4", "--machine-price", "1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --input-price: Field required"
