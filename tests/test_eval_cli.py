"""`slm eval` end to end: real engines, the generation cache, strict verdicts, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_slm
from eval_helpers import FACT_ROWS, write_adapter_run, write_jsonl


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_adapter_run(tiny_model_dir, tmp_path_factory.mktemp("runs") / "tiny-run")


def test_bad_eval_file_exits_2_with_file_and_line(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "eval.jsonl", [FACT_ROWS[0], '{"prompt": "q", "reference": 3}'])
    proc = run_slm(
        "eval", "--models", "base=default", "--data", str(data), "-o", str(tmp_path / "r")
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{data}:2: reference: expected a string" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


def test_unknown_model_and_bad_criterion_exit_2(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "eval.jsonl", FACT_ROWS)
    proc = run_slm("eval", "-m", "x=./no-such-run", "-d", str(data))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = run_slm("eval", "-m", "x=default", "-d", str(data), "--min", "facts=0.5")
    assert proc.returncode == 2 and "unknown metric 'facts'" in proc.stderr


def test_eval_tiny_run_writes_report_and_reuses_the_cache(tmp_path: Path, tiny_run: Path) -> None:
    data = write_jsonl(tmp_path / "eval.jsonl", FACT_ROWS)
    args = ["eval", "-m", f"tuned={tiny_run}", "-d", str(data), "--max-tokens", "6"]
    first = run_slm(*args, "-o", str(tmp_path / "r1"), "--min", "fact_recall=0.9", "--strict")
    assert first.returncode == 1, first.stderr  # random weights know no facts: strict FAIL
    assert "tuned: 3 generated, 0 from cache" in first.stderr
    assert "FAIL" in first.stdout and "overall: FAIL" in first.stdout
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    answers = [item["answers"]["tuned"] for item in report["items"]]
    assert all(a["error"] is None and 0 < a["completion_tokens"] <= 6 for a in answers)
    assert [a["scores"]["similarity"] for a in answers] == pytest.approx(
        _minilm_cosines([a["text"] for a in answers], [r["reference"] for r in FACT_ROWS]), abs=1e-4
    )  # each answer against its own reference, not a constant or another row's
    assert report["models"][0]["engine"] == "transformers"
    page = (tmp_path / "r1" / "report.html").read_text()
    assert 'alt="loss curve tuned"' in page and 'alt="metric bars"' in page

    second = run_slm(*args, "-o", str(tmp_path / "r2"))
    assert second.returncode == 0, second.stderr
    assert "tuned: 0 generated, 3 from cache" in second.stderr
    again = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert [i["answers"]["tuned"]["text"] for i in again["items"]] == [a["text"] for a in answers]
    assert all(i["answers"]["tuned"]["cached"] for i in again["items"])

    changed = run_slm(*args[:-1], "7", "-o", str(tmp_path / "r3"), "--no-similarity")
    assert "tuned: 3 generated" in changed.stderr  # other settings, other cache key


def _minilm_cosines(texts: list[str], references: list[str]) -> list[float]:
    import numpy as np

    from slmkit.models.embedder import MiniLMEmbedder

    embedder = MiniLMEmbedder.load()
    answers, _ = embedder.embed([t or " " for t in texts])
    wanted, _ = embedder.embed(references)
    return [float(c) for c in (np.asarray(answers) * np.asarray(wanted)).sum(axis=1)]


def test_eval_plain_hf_folder(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_jsonl(tmp_path / "eval.jsonl", FACT_ROWS[:1])
    proc = run_slm(
        "eval",
        "-m",
        f"tiny={tiny_model_dir}",
        "-d",
        str(data),
        "--max-tokens",
        "4",
        "--no-similarity",
        "-o",
        str(tmp_path / "r"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "tiny: 1 generated" in proc.stderr


@pytest.mark.slow
def test_eval_embedded_model_on_llama_server_beside_a_run(tmp_path: Path, tiny_run: Path) -> None:
    rows = [
        {
            "prompt": "How many days are in a week?",
            "reference": "A week has seven days.",
            "must_include": ["7 days"],
            "tags": ["numbers"],
        },
        {
            "prompt": "What color is the sky on a clear day?",
            "reference": "The sky is blue.",
            "must_include": ["blue"],
            "tags": ["colors"],
        },
    ]
    data = write_jsonl(tmp_path / "eval.jsonl", rows)
    proc = run_slm(
        "eval",
        "-m",
        f"base=default,tiny={tiny_run}",
        "-d",
        str(data),
        "--max-tokens",
        "32",
        "-o",
        str(tmp_path / "r"),
        "--min-gain",
        "fact_recall=0.3",
        "--strict",
    )
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    base, tiny = report["models"]
    assert (base["engine"], tiny["engine"]) == ("llamacpp", "transformers")
    week = report["items"][0]["answers"]["base"]
    assert week["prompt_tokens"] > 5 and 0 < week["completion_tokens"] <= 32
    assert base["metrics"]["fact_recall"] >= 0.5 > tiny["metrics"]["fact_recall"]
    assert proc.returncode == 1 and "overall: FAIL" in proc.stdout  # the random run gains nothing
