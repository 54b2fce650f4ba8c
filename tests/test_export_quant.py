"""Quantizing the embedded model: smaller files, and quant eval numbers that order like the levels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmkit.evaluate import metrics
from slmkit.export import agreement
from slmkit.export.agreement import classify, load_prompts
from slmkit.export.config import ExportConfig
from slmkit.export.gguf_file import convert_to_gguf
from slmkit.export.quant_eval import LevelResult, evaluate_quantization, labelled_answers
from slmkit.export.quantize import quantize
from slmkit.export.report import write_reports

LEVELS = ("q8_0", "q5_k_m", "q4_k_m")


@pytest.fixture(scope="module")
def embedded_files(
    embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("quant")
    files = {"f16": convert_to_gguf(embedded_model_dir, work / "smol-f16.gguf", "f16")}
    for level in LEVELS:
        files[level] = quantize(files["f16"], level, work / f"smol-{level}.gguf").path
    return files


def test_quantized_files_shrink_level_by_level(embedded_files: dict[str, Path]) -> None:
    sizes = [embedded_files[name].stat().st_size for name in ("f16", *LEVELS)]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)


def test_quant_eval_numbers_are_sane(
    embedded_files: dict[str, Path], embedded_model_dir: Path, tmp_path: Path
) -> None:
    cfg = ExportConfig(max_prompts=4, max_tokens=32, ppl_chunks=6)
    reference = LevelResult("f16", str(embedded_files["f16"]), embedded_files["f16"].stat().st_size)
    levels = [
        LevelResult(lv, str(embedded_files[lv]), embedded_files[lv].stat().st_size)
        for lv in ("q8_0", "q4_k_m")
    ]
    prompts = load_prompts(None, cfg.max_prompts)
    result = evaluate_quantization(reference, levels, prompts, cfg, hf_dir=embedded_model_dir)
    q8, q4 = result.levels
    assert q8.kld is not None and q4.kld is not None
    assert 0 < q8.kld.mean_kld < q4.kld.mean_kld < 1.0
    assert 1.0 >= q8.kld.same_top1 > q4.kld.same_top1 > 0.5
    assert 0.95 < q8.kld.ppl_ratio < q4.kld.ppl_ratio < 1.5
    assert result.reference.kld is not None and 1 < result.reference.kld.ppl < 1000
    for level in (q8, q4):
        assert len(level.answers) == 4 and abs(sum(level.rates.values()) - 1) < 1e-9
    assert q8.rates["different"] <= q4.rates["different"] or q8.rates["exact"] >= 0.5
    # default thresholds: q8_0 is within KLD / top-1 / PPL, q4_k_m's top-1 (~86%) is not, so q8_0
    # is recommended however many of its greedy answers took another path
    assert q8.within and not q4.within and result.recommended == q8.file
    assert any("small models" in note for note in result.notes)
    json_path, html_path = write_reports(
        tmp_path, result, {"source": "default"}, labelled_answers(result, cfg.thresholds)
    )
    report = json.loads(json_path.read_text())
    assert report["quant_eval"]["recommended"] == result.recommended
    assert "data:image/png;base64," in html_path.read_text()


def test_quant_eval_with_an_eval_set_scores_the_task_metric(
    slm, embedded_files: dict[str, Path], tmp_path: Path
) -> None:
    evalset = Path(__file__).resolve().parents[1] / "examples" / "data" / "support_eval.jsonl"
    proc = slm(
        "quant-eval",
        str(embedded_files["f16"]),
        str(embedded_files["q8_0"]),
        "--prompts",
        str(evalset),
        "--max-prompts",
        "3",
        "-o",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    levels = json.loads((tmp_path / "report.json").read_text())["quant_eval"]["levels"]
    task = levels[0]["task"]
    assert task["metric"] == "fact_recall" and task["confidence"] == 0.95
    assert task["delta_low"] <= task["delta"] <= task["delta_high"]
    assert (
        "fact_recall: f16, Δ [95% CI]" in proc.stdout
        and "exact/similar/different (info)" in proc.stdout
    )


def test_answer_agreement_labels() -> None:
    assert classify("Paris is the capital.", "paris is the  capital.", 0.5) == "exact"
    assert (
        classify(
            "The capital of France is Paris.", "The capital of France is Paris, a big city.", 0.5
        )
        == "similar"
    )
    assert classify("I like turtles.", "The capital of France is Paris.", 0.5) == "different"
    assert classify("", "", 0.5) == "exact" and classify("", "Paris.", 0.5) == "different"
    assert classify("?", "", 0.5) == "similar"  # no words on either side: ROUGE-L says equal


def test_export_and_eval_share_one_rouge_l() -> None:
    assert agreement.rouge_l is metrics.rouge_l
