"""Metrics, eval-set parsing, criteria and CLI argument parsing on hand-made cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval_helpers import FACT_ROWS, write_jsonl
from slmkit.errors import ConfigError, DataError
from slmkit.evaluate.config import Criteria, EvalConfig, parse_models, parse_thresholds
from slmkit.evaluate.evalset import load_eval_set
from slmkit.evaluate.judge import parse_verdict
from slmkit.evaluate.metrics import (
    bootstrap_ci,
    canonical_tokens,
    contains_fact,
    exact_match,
    fact_recall,
    forbidden_hit,
    lcs_length,
    paired_bootstrap_ci,
    rouge_l,
)
from slmkit.evaluate.verdict import judge_criteria, passed


@pytest.mark.parametrize(
    ("answer", "fact"),
    [
        ("The fee is 1200 dollars.", "$1,200"),
        ("It costs $1,200.", "1200 dollars"),
        ("We charge 1,200 per unit", "1200"),
        ("a 41-day return window", "41 days"),
        ("Returns within forty-one days!", "41 days"),
        ("Shipping costs $27.00.", "$27"),
        ("That is 27 USD", "$27"),
        ("You get 15 per cent off", "15%"),
        ("twelve hundred dollars", "$1,200"),
        ("Use code brw trail15 now", "BRW-TRAIL15"),
        ("Order before 1 p.m. Mountain Time", "1 pm"),
        ("Ship with WREN   GROUND.", "Wren Ground"),
        ("Call 1-800-555-0142", "1 800 555 0142"),
        ("costs 4,5 euros", "4,5 euros"),
    ],
)
def test_facts_match_across_formats(answer: str, fact: str) -> None:
    assert contains_fact(answer, fact)


@pytest.mark.parametrize(
    ("answer", "fact"),
    [
        ("within 14 days", "41 days"),
        ("a fee of $6.70", "$6.75"),
        ("1200 dollars", "12000 dollars"),
        ("Wren shipping by ground", "Wren Ground"),  # words must be contiguous
        ("fortyone days", "41 days"),
        ("$41", "41 days"),
    ],
)
def test_different_facts_do_not_match(answer: str, fact: str) -> None:
    assert not contains_fact(answer, fact)


def test_canonical_tokens_unify_numbers_and_units() -> None:
    assert canonical_tokens("$1,200.50") == ["1200.5", "dollar"]
    assert canonical_tokens("USD 30") == ["30", "dollar"]
    assert canonical_tokens("one hundred and five items") == ["105", "item"]
    assert canonical_tokens("Two thousand three hundred") == ["2300"]


def test_fact_recall_is_the_share_of_facts_present() -> None:
    answer = "Returns are accepted for 41 days; opened items cost $6.75."
    assert fact_recall(answer, ["41 days", "$6.75", "Wren Ground", "27 months"]) == 0.5
    assert fact_recall(answer, []) is None
    assert forbidden_hit(answer, ["90 days"]) == 0.0
    assert forbidden_hit(answer, ["41-day"]) == 1.0


def test_exact_match_ignores_case_punctuation_and_number_format() -> None:
    assert exact_match("The fee is $1,200.", "the fee is 1200 dollars") == 1.0
    assert exact_match("The fee is $1,200.", "The fee is $1,300.") == 0.0


def test_rouge_l_values() -> None:
    assert lcs_length(["a", "b", "c", "d", "e"], ["a", "c", "e"]) == 3
    # LCS 5: precision 5/5, recall 5/6 -> F1 = 10/11
    assert rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(10 / 11)
    assert rouge_l("identical words here", "Identical words, here!") == 1.0
    assert rouge_l("nothing shared", "completely different") == 0.0
    assert rouge_l("", "reference") == 0.0
    assert rouge_l("reference", "") == 0.0
    assert rouge_l("", "") == 1.0 and rouge_l("...", " ") == 1.0  # no tokens on either side: equal
    assert rouge_l("Привет мир", "привет, МИР!") == 1.0  # words of any script count
    assert rouge_l("Привет мир", "до свидания") == 0.0
    # order matters: reversed text keeps only one word of the LCS
    assert rouge_l("c b a", "a b c") == pytest.approx(1 / 3)


def test_bootstrap_ci_contains_the_mean_and_narrows_with_more_data() -> None:
    small = [1.0, 0.0] * 10
    large = [1.0, 0.0] * 500
    low_s, high_s = bootstrap_ci(small, samples=2000, seed=1)
    low_l, high_l = bootstrap_ci(large, samples=2000, seed=1)
    assert low_s < 0.5 < high_s and low_l < 0.5 < high_l
    assert (high_l - low_l) < (high_s - low_s) / 3
    assert bootstrap_ci([0.7] * 30) == (pytest.approx(0.7), pytest.approx(0.7))
    assert bootstrap_ci([1.0, 0.0] * 10, seed=3) == bootstrap_ci([1.0, 0.0] * 10, seed=3)


def test_paired_bootstrap_sees_a_consistent_gain() -> None:
    base = [0.0, 0.5, 0.0, 1.0] * 10
    tuned = [v + 0.2 for v in base]
    low, high = paired_bootstrap_ci(tuned, base)
    assert low == pytest.approx(0.2) and high == pytest.approx(0.2)


def test_eval_set_accepts_prompt_and_messages(tmp_path: Path) -> None:
    items = load_eval_set(write_jsonl(tmp_path / "ok.jsonl", [*FACT_ROWS, ""]))
    assert [i.line for i in items] == [1, 2, 3]
    assert items[0].messages == [{"role": "user", "content": FACT_ROWS[0]["prompt"]}]
    assert items[2].messages[0]["role"] == "system" and items[2].question.startswith("Which")
    assert items[1].tags == ["returns", "fees"] and items[1].must_include == ["$6.75"]
    assert items[0].prompt_key() != items[1].prompt_key()


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("{not json", ":2: invalid JSON"),
        ('["a list"]', ":2: expected a JSON object"),
        ('{"prompt": "q"}', ":2: reference: expected a string"),
        ('{"reference": "r"}', ":2: prompt: give exactly one of"),
        (
            '{"prompt": "q", "reference": "r", "must_include": [1]}',
            ":2: must_include: expected a list",
        ),
        ('{"prompt": "q", "reference": "r", "answer": "x"}', ":2: answer: unknown field"),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "reference": "r"}',
            ":2: messages: the last message must be the user's",
        ),
        (
            '{"messages": [{"role": "robot", "content": "q"}], "reference": "r"}',
            ":2: messages[0].role",
        ),
    ],
)
def test_bad_eval_lines_name_file_line_and_field(
    tmp_path: Path, bad_line: str, expected: str
) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [FACT_ROWS[0], bad_line])
    with pytest.raises(DataError) as err:
        load_eval_set(path)
    assert str(err.value).startswith(str(path)) and expected in str(err.value)


def test_empty_or_missing_eval_set(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        load_eval_set(write_jsonl(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(DataError, match="not found"):
        load_eval_set(tmp_path / "missing.jsonl")


def test_verdict_rows_for_gain_floor_ceiling_and_kld() -> None:
    criteria = Criteria(
        min_gain={"fact_recall": 0.3},
        min={"fact_recall": 0.8},
        max={"latency_p50_s": 2.0},
        max_kld=0.05,
    )
    values = {
        "base": {"fact_recall": 0.05, "latency_p50_s": 0.5},
        "tuned": {"fact_recall": 0.9, "latency_p50_s": 1.5},
        "q4": {"fact_recall": 0.7, "latency_p50_s": 0.4},
    }
    rows = judge_criteria(
        criteria, ["base", "tuned", "q4"], values, {"base": None, "tuned": None, "q4": 0.067}
    )
    status = {(r.model, r.criterion): r.status for r in rows}
    assert status[("tuned", "fact_recall gain vs base")] == "PASS"
    assert status[("tuned", "fact_recall")] == "PASS"
    assert status[("q4", "fact_recall gain vs base")] == "PASS"
    assert status[("q4", "fact_recall")] == "FAIL"
    assert status[("q4", "quantization KLD vs f16")] == "FAIL"
    assert ("base", "fact_recall") not in status  # the baseline is not held to the criteria
    assert not passed(rows)
    assert passed([r for r in rows if r.model == "tuned"])


def test_verdict_without_measurement_fails_and_without_export_skips() -> None:
    rows = judge_criteria(
        Criteria(min={"judge_win_rate": 0.5}, max_kld=0.1),
        ["a", "b"],
        {"a": {}, "b": {"judge_win_rate": None}},
        {"a": None, "b": None},
    )
    assert [r.status for r in rows] == ["FAIL", "SKIP"]


def test_config_rejects_unknown_metrics_and_duplicate_names() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        Criteria(min={"facts": 0.5})
    with pytest.raises(ValueError, match="duplicate model names"):
        EvalConfig(
            models=[{"name": "a", "ref": "default"}, {"name": "a", "ref": "x"}], data="e.jsonl"
        )


def test_cli_argument_parsing() -> None:
    assert parse_models("base=default, tuned=runs/demo,exports/demo/model-q8_0.gguf") == [
        {"name": "base", "ref": "default"},
        {"name": "tuned", "ref": "runs/demo"},
        {"name": "model-q8_0", "ref": "exports/demo/model-q8_0.gguf"},
    ]
    assert parse_thresholds(["fact_recall=0.3,rouge_l=0.1", "similarity=0.5"], "--min") == {
        "fact_recall": 0.3,
        "rouge_l": 0.1,
        "similarity": 0.5,
    }
    with pytest.raises(ConfigError, match="METRIC=NUMBER"):
        parse_thresholds(["fact_recall"], "--min-gain")
    with pytest.raises(ConfigError, match="NAME=REF"):
        parse_models("base=")


def test_judge_reply_parsing() -> None:
    assert parse_verdict("B") == "B"
    assert parse_verdict("Answer A is better.") == "A"
    assert parse_verdict("tie") == "TIE"
    assert parse_verdict("I cannot decide") == "TIE"


def test_kld_is_read_from_the_export_quant_eval(tmp_path: Path) -> None:
    import json

    from slmkit.evaluate.verdict import export_kld
    from slmkit.models import resolve_model

    export = tmp_path / "exports" / "demo"
    export.mkdir(parents=True)
    for name in ("model-f16.gguf", "model-q8_0.gguf", "model-q4_k_m.gguf"):
        (export / name).write_bytes(b"GGUF")
    report = {
        "quant_eval": {
            "reference": {"level": "f16", "file": str(export / "model-f16.gguf"), "kld": None},
            "levels": [
                {
                    "level": "q8_0",
                    "file": str(export / "model-q8_0.gguf"),
                    "kld": {"mean_kld": 0.0045},
                },
                {"level": "q4_k_m", "file": "model-q4_k_m.gguf", "kld": {"mean_kld": 0.067}},
            ],
        }
    }
    (export / "report.json").write_text(json.dumps(report))
    assert export_kld(resolve_model(export / "model-q8_0.gguf")) == 0.0045
    assert export_kld(resolve_model(export / "model-q4_k_m.gguf")) == 0.067
    assert export_kld(resolve_model(export / "model-f16.gguf")) == 0.0
    (export / "report.json").unlink()
    assert export_kld(resolve_model(export / "model-q8_0.gguf")) is None


def test_a_kld_fail_on_the_level_its_export_advised_against_is_expected(tmp_path: Path) -> None:
    """The demo exports q4_k_m to show what quantization breaks: its KLD FAIL is foreseen by the
    export's own quant eval, says why in one line, and leaves the overall verdict a PASS; a FAIL
    on a level the export called fine still fails the whole."""
    import json

    from slmkit.evaluate.verdict import export_advice, verdict_line
    from slmkit.models import resolve_model

    export = tmp_path / "export"
    export.mkdir()
    for name in ("demo-q8_0.gguf", "demo-q4_k_m.gguf"):
        (export / name).write_bytes(b"GGUF")
    q4_problem = "KLD 0.112 > 0.05"
    levels = [
        {"level": "q8_0", "file": "demo-q8_0.gguf", "kld": {"mean_kld": 0.004}, "within": True},
        {
            "level": "q4_k_m",
            "file": "demo-q4_k_m.gguf",
            "kld": {"mean_kld": 0.112},
            "within": False,
            "problems": [q4_problem],
        },
    ]
    report = {"recommended": "demo-q8_0.gguf", "quant_eval": {"levels": levels}}
    (export / "report.json").write_text(json.dumps(report))
    q8, q4 = (resolve_model(export / f"demo-{level}.gguf") for level in ("q8_0", "q4_k_m"))
    assert export_advice(q8) == ""
    advice = export_advice(q4)
    assert advice == (
        f"`slm export` advised against this level ({q4_problem}) and recommends demo-q8_0.gguf"
    )

    criteria = Criteria(max_kld=0.1)
    values: dict[str, dict[str, float | None]] = {"base": {}, "q8": {}, "q4": {}}
    rows = judge_criteria(
        criteria, ["base", "q8", "q4"], values, {"q8": 0.004, "q4": 0.112}, {"q4": advice}
    )
    q4_row = next(r for r in rows if r.model == "q4")
    assert (q4_row.status, q4_row.expected) == ("FAIL", advice)
    assert passed(rows)
    assert verdict_line(q4_row) == (
        "FAIL (expected): q4 quantization KLD vs f16 (required <= 0.1000, measured 0.112): "
        + advice
    )
    strict = judge_criteria(
        Criteria(max_kld=0.001),
        ["base", "q8", "q4"],
        values,
        {"q8": 0.004, "q4": 0.112},
        {"q4": advice},
    )
    assert [r.status for r in strict] == ["FAIL", "FAIL"] and not passed(strict)


def test_similarity_ranks_identical_over_paraphrase_over_unrelated() -> None:
    """MiniLM cosine to the reference: identical 1.0, a paraphrase well above an unrelated answer."""
    from slmkit.evaluate.evalset import EvalItem
    from slmkit.evaluate.generate import Generation
    from slmkit.evaluate.scoring import add_similarity, score_answer

    reference = "You can return unused items within 41 days of delivery."
    answers = [
        reference,
        "Unused items may be sent back up to 41 days after they arrive.",
        "Zebras sleep standing up in the savanna.",
    ]
    items = [
        EvalItem(i + 1, [{"role": "user", "content": "Returns?"}], reference) for i in range(3)
    ]
    scores = {"m": [score_answer(item, a) for item, a in zip(items, answers, strict=True)]}
    add_similarity(items, {"m": [Generation(a) for a in answers]}, scores)
    identical, paraphrase, unrelated = (s.similarity for s in scores["m"])
    assert identical == pytest.approx(1.0, abs=1e-4)
    assert paraphrase is not None and unrelated is not None
    assert paraphrase > 0.7 and unrelated < 0.3 and paraphrase - unrelated > 0.5
