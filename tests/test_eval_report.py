"""The report from hand-made answers: JSON content, self-contained HTML with plots, verdict."""

from __future__ import annotations

import json
import re
from pathlib import Path

from eval_helpers import FACT_ROWS, write_jsonl
from slmkit.evaluate import scoring
from slmkit.evaluate.config import EvalConfig
from slmkit.evaluate.evalset import load_eval_set
from slmkit.evaluate.generate import Generation
from slmkit.evaluate.report import most_different, write_report
from slmkit.evaluate.run import EvalResult, ModelResult
from slmkit.evaluate.verdict import judge_criteria

ANSWERS = {
    "base": ["I am not sure.", "There is no fee.", "We use many carriers."],
    "tuned": [
        "You can return items within forty-one days.",
        "Opened items cost 6.75 dollars to restock.",
        "Wren Ground is the cheapest.",
    ],
}


def _model(name: str, items: list, config: EvalConfig, run_dir: Path | None) -> ModelResult:
    gens = [
        Generation(text=t, completion_tokens=8, latency_s=0.2 + 0.1 * i, ttft_s=0.05)
        for i, t in enumerate(ANSWERS[name])
    ]
    scores = [scoring.score_answer(item, g.text) for item, g in zip(items, gens, strict=True)]
    return ModelResult(
        name=name,
        ref=name,
        kind="hf",
        engine="transformers",
        generations=gens,
        scores=scores,
        summary=scoring.summarize(items, scores, gens),
        generated=len(gens),
        run_dir=run_dir,
    )


def _result(tmp_path: Path, run_dir: Path | None) -> EvalResult:
    data = write_jsonl(tmp_path / "eval.jsonl", FACT_ROWS)
    config = EvalConfig(
        models=[{"name": "base", "ref": "default"}, {"name": "tuned", "ref": "runs/x"}],
        data=data,
        out_dir=tmp_path / "report",
        similarity=False,
        criteria={
            "min_gain": {"fact_recall": 0.3},
            "min": {"fact_recall": 0.8, "exact_match": 0.5},
        },
    )
    items = load_eval_set(data)
    models = [_model("base", items, config, None), _model("tuned", items, config, run_dir)]
    for m in models:
        m.main = scoring.interval(
            m.scores,
            "fact_recall",
            models[0].scores if m is not models[0] else None,
            samples=200,
            confidence=0.95,
            seed=0,
        )
    values = {m.name: m.summary.values for m in models}
    verdict = judge_criteria(config.criteria, ["base", "tuned"], values, {})
    return EvalResult(
        config,
        items,
        models,
        "fact_recall",
        verdict,
        config.out_dir / "report.json",
        config.out_dir / "report.html",
    )


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    write_jsonl(
        run / "metrics.jsonl",
        [{"step": s, "loss": 3.0 / s} for s in range(1, 8)]
        + [{"step": 7, "eval_loss": 0.9}, "not json"],
    )
    return run


def test_report_json_holds_scores_answers_and_verdict(tmp_path: Path) -> None:
    result = _result(tmp_path, None)
    write_report(result)
    data = json.loads(result.report_json.read_text())
    tuned = data["models"][1]
    assert (
        tuned["metrics"]["fact_recall"] == 1.0
        and data["models"][0]["metrics"]["fact_recall"] == 0.0
    )
    assert tuned["main"]["delta"] == 1.0
    assert (
        tuned["by_tag"]["returns"]["n"] == 2.0 and tuned["by_tag"]["shipping"]["fact_recall"] == 1.0
    )
    assert data["items"][1]["answers"]["tuned"]["scores"]["fact_recall"] == 1.0
    verdict = {(r["model"], r["criterion"]): r["status"] for r in data["verdict"]}
    assert verdict == {
        ("tuned", "fact_recall gain vs base"): "PASS",
        ("tuned", "fact_recall"): "PASS",
        ("tuned", "exact_match"): "FAIL",
    }
    assert data["passed"] is False


def test_html_is_self_contained_with_plots_loss_curve_and_verdict(tmp_path: Path) -> None:
    result = _result(tmp_path, _run_dir(tmp_path))
    write_report(result)
    page = result.report_html.read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [alt for alt, _ in images] == [
        "metric bars",
        "tag bars",
        "latency distribution",
        "loss curve tuned",
    ]
    assert all(len(b64) > 2000 for _, b64 in images)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    verdict = page[page.index("<h2>Verdict</h2>") :]
    assert (
        verdict.count('class="PASS"') == 2 and verdict.count('class="FAIL"') == 2
    )  # 1 row + overall
    assert 'Overall: <span class="FAIL">FAIL</span>' in verdict
    assert "forty-one days" in page  # side-by-side answers


def test_most_different_puts_disagreements_first(tmp_path: Path) -> None:
    result = _result(tmp_path, None)
    result.models[1].generations[2] = Generation(text="We use many carriers.")
    result.models[1].scores[2] = scoring.score_answer(result.items[2], "We use many carriers.")
    assert most_different(result, count=2) == [0, 1]
