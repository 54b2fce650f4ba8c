"""LLaMA-Factory-shaped demo sets (our own small copies in tests/data/llamafactory_demo/: an alpaca
file with duplicates, an identity file, a glaive-style tool-call file, a dpo_en_demo-style preference
file with over-long prompts) validate with exit 0, warn with file:line, and train.

Duplicates are warnings (`--strict` fails on them), `data.dedupe` drops exactly the planted copies,
over-long prompts are cut from their start so the answer keeps its tokens (or dropped under
`drop`), and a tool-call record trains on its function call and answer, not on the observation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import run_slm
from slmkit.data import Record, load_records
from slmkit.data.template import mask_segments, tokenize_sft
from train_helpers import loss_curve, tiny_recipe, write_recipe

DEMO = Path(__file__).resolve().parent / "data" / "llamafactory_demo"
SHOWN = "tests/data/llamafactory_demo"
# the exact copies planted in the fixtures: (file, line of the copy, line of the first one)
PLANTED = [
    ("alpaca_demo.json", 22, 2),
    ("alpaca_demo.json", 37, 7),
    ("alpaca_demo.json", 52, 2),
    ("glaive_toolcall_demo.json", 57, 2),
    ("glaive_toolcall_demo.json", 99, 44),
]
TOOLS_ONLY_DIFFERENT = [("glaive_toolcall_demo.json", 78), ("glaive_toolcall_demo.json", 112)]
LONG_PAIRS = [34, 50]  # dpo_demo.json: a long single question; a long first turn of a dialogue
CUTOFF = 256
SFT_SETS = ["alpaca_demo", "identity", "glaive_toolcall_demo"]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _warnings(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if ": warning: " in line]


def test_the_demo_folder_validates_with_located_warnings(slm, tiny_model_dir: Path) -> None:
    result = slm(
        "data", "validate", SHOWN, "--model", str(tiny_model_dir), "--cutoff-len", str(CUTOFF)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = _warnings(result.stdout)
    duplicates = [w for w in warnings if "duplicate of" in w]
    assert duplicates == [
        f"{SHOWN}/{file}:{line}: (record): warning: duplicate of {SHOWN}/{file}:{first} (kept, "
        "so it weighs twice; recipe option data.dedupe: true drops exact duplicates)"
        for file, line, first in PLANTED
    ]
    for file, line in TOOLS_ONLY_DIFFERENT:
        assert f"{file}:{line}:" not in result.stdout
    over = [w for w in warnings if "over cutoff_len" in w]
    assert [w.split(":")[1] for w in over] == [str(line) for line in LONG_PAIRS]
    assert all(
        f"{SHOWN}/dpo_demo.json:" in w and "the answer keeps all its tokens" in w for w in over
    )
    assert f"5 exact duplicate(s), kept (first: {SHOWN}/alpaca_demo.json:22" in result.stdout
    assert (
        "2 sample(s) over cutoff_len 256: 2 truncated (prompt cut from its start)" in result.stdout
    )
    assert "ok: 31 valid record(s), 0 error(s), 7 warning(s)" in result.stdout


def test_strict_makes_warnings_fail(slm) -> None:
    result = slm("data", "validate", f"{SHOWN}/alpaca_demo.json", "--model", "none", "--strict")
    assert result.returncode == 2
    assert len(_warnings(result.stdout)) == 3 and "Traceback" not in result.stderr
    assert (
        "validation failed (--strict: warnings fail): 12 valid record(s), 0 error(s), 3 warning(s)"
        in (result.stderr)
    )


def test_records_differing_only_in_tools_are_not_duplicates() -> None:
    records = {r.source: r for r in load_records([DEMO], names=["glaive_toolcall_demo"]).records}
    shown = f"{SHOWN}/glaive_toolcall_demo.json"
    for (_, line), first in zip(TOOLS_ONLY_DIFFERENT, (2, 44), strict=True):
        copy, original = records[f"{shown}:{line}"], records[f"{shown}:{first}"]
        assert copy.messages == original.messages and copy.tools != original.tools
        assert copy.key() != original.key()
    assert records[f"{shown}:57"].key() == records[f"{shown}:2"].key()


def test_a_tool_call_trains_on_the_call_and_the_answer_only(tokenizer: Any) -> None:
    record = load_records([DEMO], names=["glaive_toolcall_demo"]).records[0]
    assert [m["role"] for m in record.messages] == ["user", "assistant", "tool", "assistant"]
    assert record.tools and record.tools[0]["function"]["name"] == "get_weather"
    sample = tokenize_sft([record], tokenizer).samples[0]
    segments = mask_segments(sample, tokenizer)
    trained = [text for text, loss in segments if loss]
    assert trained == [
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}<|im_end|>',
        "It is 4 degrees and cloudy in Oslo.<|im_end|>",
    ]
    untrained = "".join(text for text, loss in segments if not loss)
    assert '"description": "Current weather for a city"' in untrained  # tools in the system prompt
    assert "What is the weather in Oslo?" in untrained
    assert '{"temperature": 4, "sky": "cloudy"}' in untrained  # the observation: no loss


def test_show_marks_the_part_without_loss(slm, tiny_model_dir: Path) -> None:
    result = slm(
        "data", "validate", SHOWN, "--dataset", "glaive_toolcall_demo",
        "--model", str(tiny_model_dir), "--show", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    headers = re.findall(r"^── (\S+): (\d+) tokens, (\d+) with loss$", result.stdout, re.M)
    assert [h[0] for h in headers] == [f"{SHOWN}/glaive_toolcall_demo.json:{n}" for n in (2, 23)]
    first = result.stdout.split("── ", 2)[1]
    assert '\n<|im_start|>assistant\n⟧{"name": "get_weather"' in first
    assert '<|im_end|>⟦\n<|im_start|>tool\n{"temperature": 4' in first
    assert "── ⟦ ⟧ (dim): no loss" in result.stdout


def _last_answer(sample: Any) -> list[int]:
    """Token ids of the last run of tokens that carry loss (the final answer)."""
    runs: list[list[int]] = [[]]
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        if label != -100:
            runs[-1].append(token)
        elif runs[-1]:
            runs.append([])
    return [run for run in runs if run][-1]


def _pairs(tokenizer: Any, overflow: str) -> tuple[list[Record], Any]:
    records = load_records([DEMO], names=["dpo_demo"]).records
    return records, tokenize_sft(records, tokenizer, cutoff_len=CUTOFF, overflow=overflow)  # type: ignore[arg-type]


def test_long_prompts_are_cut_from_their_start_and_the_answers_kept(tokenizer: Any) -> None:
    records, fitted = _pairs(tokenizer, "truncate")
    full = tokenize_sft(records, tokenizer, cutoff_len=4096)
    assert fitted.n_over_cutoff == fitted.n_truncated == len(LONG_PAIRS) and not fitted.n_dropped
    assert [p.line for p in fitted.problems] == LONG_PAIRS
    assert all(
        p.severity == "warning" and p.file == f"{SHOWN}/dpo_demo.json" for p in fitted.problems
    )
    for before, after, record in zip(full.samples, fitted.samples, fitted.records, strict=True):
        assert len(after) <= CUTOFF
        assert _last_answer(after) == _last_answer(before)  # every token of the answer kept
        assert record.rejected is not None and record.rejected[:-1] == record.messages[:-1]
    question, dialogue = (fitted.records[2], fitted.records[3])
    assert question.messages[0]["content"].endswith("In one sentence: when did the museum open?")
    assert [m["content"] for m in dialogue.messages] == [
        "What was in the garden?",
        "Old ship anchors.",
    ]


def test_the_oldest_turns_go_first_and_the_system_prompt_stays(tokenizer: Any) -> None:
    turns = [
        {"role": "system", "content": "You are the museum's guide."},
        {"role": "user", "content": "Tell me the history. " * 60},
        {"role": "assistant", "content": "It opened in 1911. " * 20},
        {"role": "user", "content": "And the garden?"},
        {"role": "assistant", "content": "It holds old ship anchors."},
    ]
    result = tokenize_sft([Record(turns, "chat.jsonl:4")], tokenizer, cutoff_len=128)
    assert [m["content"] for m in result.records[0].messages] == [
        turns[0]["content"],
        "And the garden?",
        "It holds old ship anchors.",
    ]
    assert "2 oldest turn(s) dropped" in result.problems[0].message


def test_drop_leaves_long_pairs_out_with_a_located_warning(tokenizer: Any) -> None:
    records, dropped = _pairs(tokenizer, "drop")
    assert dropped.n_dropped == len(LONG_PAIRS) and len(dropped.samples) == len(records) - 2
    assert [(p.line, p.message.endswith(": dropped")) for p in dropped.problems] == [
        (line, True) for line in LONG_PAIRS
    ]


def _train(tmp_path: Path, tiny_model_dir: Path, name: str, **data: Any) -> str:
    """Three steps of `slm train` on the demo folder; its log with line wraps undone."""
    recipe = tiny_recipe(tiny_model_dir, tmp_path / name, DEMO, max_steps=3, save_steps=100)
    recipe["data"].update(cutoff_len=CUTOFF, **data)
    if data.get("names") == ["dpo_demo"]:
        recipe["method"] = "dpo"
    result = run_slm("train", str(write_recipe(tmp_path / f"{name}.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = loss_curve(tmp_path / name)
    assert len(losses) == 3 and all(loss == loss and loss > 0 for loss in losses)
    return " ".join(result.stderr.split())


def test_duplicate_bearing_sets_train_and_dedupe_drops_exactly_the_copies(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    kept = _train(tmp_path, tiny_model_dir, "kept", names=SFT_SETS)
    assert f"warning: {len(PLANTED)} exact duplicate record(s) kept" in kept
    deduped = _train(tmp_path, tiny_model_dir, "deduped", names=SFT_SETS, dedupe=True)
    assert f"data.dedupe: dropped {len(PLANTED)} exact duplicate record(s) of 26" in deduped


def test_long_preference_pairs_train_with_dpo(tmp_path: Path, tiny_model_dir: Path) -> None:
    result = _train(tmp_path, tiny_model_dir, "dpo", names=["dpo_demo"])
    assert (
        f"2 sample(s) over cutoff_len 256: 2 truncated, 0 dropped (first: {SHOWN}/dpo_demo.json:34: "
        "(record): 390 tokens, over cutoff_len 256: truncated, prompt cut from its start" in result
    )


def test_malformed_tools_are_a_located_error(tmp_path: Path) -> None:
    rows = [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
        {
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo."}],
            "tools": '[{"description": "no name"}]',
        },
    ]
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = load_records([path])
    assert [(p.line, p.field, p.severity) for p in result.problems] == [(2, "tools", "error")]
    assert "expected a list of" in result.problems[0].message and len(result.records) == 1
