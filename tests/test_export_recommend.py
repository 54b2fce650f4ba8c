"""Which quantization level `slm export` recommends, decided on hand-made measurement tables.

The rule: the smallest level whose KLD / top-1 / PPL ratio are within the thresholds and whose
task metric (when the prompts are an eval set) shows no real drop; answer agreement is shown,
not judged, unless `max_different` is set.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from slmkit.evaluate.evalset import EvalItem
from slmkit.export.config import ExportConfig, Thresholds
from slmkit.export.kld import KldStats
from slmkit.export.quant_eval import (
    LevelResult,
    QuantEvalResult,
    judge,
    quality_notes,
    recommend,
    task_score,
)
from slmkit.export.report import quant_table_markdown

MB = 1_000_000
# Measured on the embedded 135M model (docs/benchmarks.md): q8_0 is near-lossless on held-out
# text, yet a quarter of its greedy answers go another way after a flipped token.
EMBEDDED = {
    "q8_0": (145, KldStats(0.0038, 0.954, 1.008, 12.7), {"exact": 0.17, "similar": 0.58}),
    "q5_k_m": (112, KldStats(0.0761, 0.819, 1.129, 14.3), {"exact": 0.0, "similar": 0.33}),
    "q4_k_m": (105, KldStats(0.0481, 0.860, 1.040, 13.2), {"exact": 0.0, "similar": 0.33}),
}


def _level(name: str, size_mb: int, kld: KldStats, rates: dict[str, float]) -> LevelResult:
    rates = {**rates, "different": round(1 - sum(rates.values()), 6)}
    return LevelResult(name, f"/x/model-{name}.gguf", size_mb * MB, kld=kld, rates=rates)


def _reference() -> LevelResult:
    return LevelResult("f16", "/x/model-f16.gguf", 271 * MB, kld=KldStats(0.0, 1.0, 1.0, 12.6))


def _judged(levels: list[LevelResult], thresholds: Thresholds | None = None) -> list[LevelResult]:
    for level in levels:
        judge(level, thresholds or Thresholds())
    return levels


def _embedded_levels() -> list[LevelResult]:
    return [_level(name, *row) for name, row in EMBEDDED.items()]


def test_q8_0_within_thresholds_is_recommended_despite_low_answer_agreement() -> None:
    reference = _reference()
    q8, q5, q4 = _judged(_embedded_levels())
    assert q8.within and q8.problems == [] and q8.rates["different"] > 0.2
    assert recommend(reference, [q8, q5, q4]) == q8.file


def test_a_level_beyond_the_kld_threshold_is_not_recommended() -> None:
    reference = _reference()
    q8, q5, q4 = _judged(_embedded_levels())
    assert not q5.within and any(p.startswith("KLD 0.076 >") for p in q5.problems)
    assert not q4.within and any(p.startswith("top-1 86.0% <") for p in q4.problems)
    just_over = _level("q6_k", 138, KldStats(0.051, 0.95, 1.01, 12.7), {"exact": 1.0})
    _judged([just_over])
    assert just_over.problems == [f"KLD 0.051 > {Thresholds().max_kld}"]
    assert recommend(reference, [q8, q5, q4, just_over]) == q8.file  # smaller, but outside


def test_every_level_outside_means_the_reference_and_a_note() -> None:
    reference = _reference()
    levels = _judged(_embedded_levels(), Thresholds(max_kld=0.001))
    result = QuantEvalResult(reference, levels, recommend(reference, levels), [], "heldout", 256)
    assert result.recommended == reference.file
    assert any("no quantized level" in n for n in quality_notes(result, Thresholds()))


def test_answer_agreement_is_judged_only_when_max_different_is_set() -> None:
    reference = _reference()
    q8, q5, q4 = _judged(_embedded_levels(), Thresholds(max_different=0.10))
    assert q8.problems == ["25% different answers > 10%"]
    assert recommend(reference, [q8, q5, q4]) == reference.file


def _items(n: int) -> list[EvalItem]:
    return [
        EvalItem(i, [{"role": "user", "content": f"Code of room {i}?"}], f"It is {i}7.", [f"{i}7"])
        for i in range(n)
    ]


def test_a_task_metric_ci_that_shows_a_real_drop_rules_the_level_out() -> None:
    items = _items(20)
    right = [f"The code is {i}7." for i in range(20)]
    lost = [f"The code is {i}9." if i % 2 else right[i] for i in range(20)]  # half the facts gone
    reference = _reference()
    reference.task = task_score(items, right, None, "fact_recall", 0.95)
    q8, q5, q4 = _judged(
        _embedded_levels(), Thresholds(max_kld=0.1, min_top1=0.8, max_ppl_ratio=1.2)
    )
    q4.task = task_score(items, lost, right, "fact_recall", 0.95)
    judge(q4, Thresholds(max_kld=0.1, min_top1=0.8, max_ppl_ratio=1.2))
    assert reference.task is not None and reference.task.mean == 1.0
    assert q4.task is not None and q4.task.delta == -0.5 and q4.task.delta_high < 0
    assert not q4.within and q4.problems[0].startswith("fact_recall -0.500 vs reference, 95% CI [")
    assert recommend(reference, [q8, q5, q4]) == q5.file  # q5_k_m passes these relaxed thresholds


def test_one_changed_answer_is_noise_not_a_drop() -> None:
    items = _items(20)
    right = [f"The code is {i}7." for i in range(20)]
    one_lost = ["I do not know.", *right[1:]]
    q8 = _level("q8_0", *EMBEDDED["q8_0"])
    q8.task = task_score(items, one_lost, right, "fact_recall", 0.95)
    judge(q8, Thresholds())
    assert q8.task is not None and q8.task.delta == pytest.approx(-0.05) and q8.task.delta_low < 0
    assert q8.task.delta_high == 0.0 and q8.within
    q8.task.delta_high = -0.01  # a drop, but within an allowed tolerance
    judge(q8, Thresholds(max_task_drop=0.02))
    assert q8.within


def test_the_table_shows_the_task_metric_and_says_answers_are_information() -> None:
    items = _items(10)
    right = [f"The code is {i}7." for i in range(10)]
    reference = _reference()
    reference.task = task_score(items, right, None, "fact_recall", 0.95)
    levels = _judged(_embedded_levels())
    for level in levels:
        level.task = task_score(items, right, right, "fact_recall", 0.95)
    result = QuantEvalResult(reference, levels, recommend(reference, levels), [], "heldout", 256)
    table = quant_table_markdown(result).splitlines()
    assert (
        "fact_recall: f16, Δ [95% CI]" in table[0] and "exact/similar/different (info)" in table[0]
    )
    assert table[2].startswith("| f16 | 271 MB |") and "1.000 [1.00, 1.00]" in table[2]
    assert "+0.000 [+0.00, +0.00] | 17%/58%/25% | recommended |" in table[3]
    assert table[4].endswith("| outside |")
    note = next(n for n in quality_notes(result, Thresholds()) if "shown, not judged" in n)
    assert note.startswith("25% of q8_0's temperature-0 answers differ")
    assert "task metric (fact_recall)" in note


def test_thresholds_and_task_metric_live_in_the_export_config() -> None:
    cfg = ExportConfig()
    assert cfg.task_metric == "fact_recall" and cfg.thresholds.max_different is None
    assert Path(recommend(_reference(), [])).name == "model-f16.gguf"


def test_an_eval_set_as_prompts_brings_its_items(tmp_path: Path) -> None:
    from slmkit.export.agreement import load_prompt_set

    evalset = tmp_path / "eval.jsonl"
    evalset.write_text(
        '{"prompt": "Return window?", "system": "Be brief.", "reference": "41 days.", "must_include": ["41 days"]}\n'
        '{"prompt": "Shipping?", "reference": "Free over $50."}\n'
    )
    prompts, items = load_prompt_set(evalset, 1)
    assert items is not None and [i.must_include for i in items] == [["41 days"]]
    assert prompts == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Return window?"}]
    ]
    plain = tmp_path / "prompts.jsonl"
    plain.write_text('{"prompt": "Hello?"}\n')
    assert load_prompt_set(plain, 5) == ([[{"role": "user", "content": "Hello?"}]], None)
    assert load_prompt_set(None, 2)[1] is None and len(load_prompt_set(None, 2)[0]) == 2
