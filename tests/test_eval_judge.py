"""The LLM judge end to end: `slm eval` of two tiny models with `--judge-url` pointed at a real
`slm serve default`; the report carries the judge's scores (each item a win, tie or loss, the
baseline at 0.5), every comparison reached the judge server, and a judge that is down ends the run
with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_slm
from eval_helpers import FACT_ROWS, write_adapter_run, write_jsonl
from serve_helpers import ServerProcess, needs_llama_server
from slmkit.child_process import free_port

pytestmark = needs_llama_server

CONFIG = {"llamacpp": {"ctx_size": 2048, "parallel": 1, "threads": 1}}


@pytest.fixture(scope="module")
def judge(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("judge-home")
    with ServerProcess(["default"], config=CONFIG, env={"SLM_HOME": str(home)}) as srv:
        yield srv


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    run = write_adapter_run(tiny_model_dir, tmp_path_factory.mktemp("runs") / "tiny-run")
    return f"base={tiny_model_dir},tuned={run}"


def eval_args(models: str, data: Path, out: Path, judge_url: str) -> list[str]:
    return [
        "eval", "-m", models, "-d", str(data), "-o", str(out), "--max-tokens", "6",
        "--no-similarity", "--judge-url", judge_url, "--judge-model", "default",
    ]  # fmt: skip


def test_judge_scores_come_from_the_judge_server(
    judge: ServerProcess, models: str, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "eval.jsonl", FACT_ROWS)
    before = judge.metric("slm_requests_total", status="200")
    proc = run_slm(*eval_args(models, data, tmp_path / "r", judge.base_url + "/v1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one pairwise verdict per item, each one a chat request the judge answered
    assert judge.metric("slm_requests_total", status="200") - before == len(FACT_ROWS)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    base, tuned = report["models"]
    assert base["metrics"]["judge_win_rate"] == 0.5  # the baseline against itself
    assert 0.0 <= tuned["metrics"]["judge_win_rate"] <= 1.0
    per_item = [item["answers"]["tuned"]["scores"]["judge_win_rate"] for item in report["items"]]
    assert len(per_item) == len(FACT_ROWS) and set(per_item) <= {0.0, 0.5, 1.0}
    assert tuned["metrics"]["judge_win_rate"] == pytest.approx(sum(per_item) / len(per_item))
    assert "judge_win_rate" in (tmp_path / "r" / "report.html").read_text()


def test_a_judge_that_is_down_is_one_clear_line(models: str, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "eval.jsonl", FACT_ROWS[:1])
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    proc = run_slm(*eval_args(models, data, tmp_path / "r", url))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if f"judge at {url} failed" in line]
    assert len(lines) == 1 and "Connection" in lines[0], proc.stderr[-2000:]
