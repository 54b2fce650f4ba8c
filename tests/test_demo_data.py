"""The bundled demo data set (examples/data/): it parses, its sizes and formats are what the
demo relies on, every evaluated fact is taught, the eval questions are truly held out, and
scripts/make_demo_data.py regenerates it byte for byte."""

from __future__ import annotations

import difflib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
GENERATED = (
    "support_sft.jsonl",
    "support_sft_alpaca.json",
    "support_dpo.jsonl",
    "support_kto.jsonl",
    "support_eval.jsonl",
    "support_sft_small.jsonl",
    "support_eval_small.jsonl",
    "dataset_info.json",
    "conch/magic_conch.json",
    "conch/dataset_info.json",
    "tickets_train.jsonl",
    "tickets_eval.jsonl",
)
ROLES = {"system", "user", "assistant"}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def sft_messages() -> list[dict[str, Any]]:
    return read_jsonl(DATA / "support_sft.jsonl")


@pytest.fixture(scope="module")
def sft_alpaca() -> list[dict[str, Any]]:
    return json.loads((DATA / "support_sft_alpaca.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dpo_pairs() -> list[dict[str, Any]]:
    return read_jsonl(DATA / "support_dpo.jsonl")


@pytest.fixture(scope="module")
def eval_items() -> list[dict[str, Any]]:
    return read_jsonl(DATA / "support_eval.jsonl")


def alpaca_turns(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(user, assistant) turns of an alpaca record, history first."""
    history = [(user, assistant) for user, assistant in record["history"]]
    return [*history, (record["instruction"], record["output"])]


def message_turns(record: dict[str, Any]) -> list[tuple[str, str]]:
    turns = [m for m in record["messages"] if m["role"] != "system"]
    return [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns), 2)]


def assistant_answers(messages: list[dict[str, Any]], alpaca: list[dict[str, Any]]) -> list[str]:
    turns = [t for r in messages for t in message_turns(r)] + [
        t for r in alpaca for t in alpaca_turns(r)
    ]
    return [answer for _, answer in turns]


def training_prompts(
    messages: list[dict[str, Any]], alpaca: list[dict[str, Any]], dpo: list[dict[str, Any]]
) -> list[str]:
    turns = [t for r in messages for t in message_turns(r)] + [
        t for r in alpaca for t in alpaca_turns(r)
    ]
    return sorted({user for user, _ in turns} | {pair["prompt"] for pair in dpo})


def words(text: str) -> set[str]:
    return set(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def test_messages_file_is_openai_chat_with_the_system_prompt_on_most_records(sft_messages):
    assert 1300 <= len(sft_messages) <= 1450
    with_system = 0
    for record in sft_messages:
        messages = record["messages"]
        assert set(record) == {"messages"}
        assert all(set(m) == {"role", "content"} and m["role"] in ROLES for m in messages)
        with_system += messages[0]["role"] == "system"
        roles = [m["role"] for m in messages if m["role"] != "system"]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles, record
        assert all(m["content"].strip() for m in messages)
    assert 0.6 <= with_system / len(sft_messages) <= 0.9
    assert sum(len(message_turns(r)) == 2 for r in sft_messages) >= 10


def test_alpaca_file_has_every_column_on_every_record(sft_alpaca):
    assert 250 <= len(sft_alpaca) <= 320
    for record in sft_alpaca:
        assert set(record) == {"instruction", "input", "output", "system", "history"}
        assert record["instruction"].strip() and record["output"].strip() and record["system"]
        assert all(len(turn) == 2 for turn in record["history"])
    assert sum(bool(r["history"]) for r in sft_alpaca) >= 3


def test_sft_answers_are_short(sft_messages, sft_alpaca):
    answers = assistant_answers(sft_messages, sft_alpaca)
    assert 1600 <= len(sft_messages) + len(sft_alpaca) <= 1700
    # ~1.3 tokens per word for this English: 30 words stays within the 40-token budget.
    assert max(len(answer.split()) for answer in answers) <= 30


def test_eval_items_are_well_formed_and_cover_every_fact_two_or_three_times(eval_items):
    assert 55 <= len(eval_items) <= 70
    for item in eval_items:
        assert set(item) == {"prompt", "reference", "must_include", "tags"}
        assert item["must_include"] and item["tags"]
        for fact in item["must_include"]:
            assert fact in item["reference"], item
    per_fact = Counter(tag for item in eval_items for tag in item["tags"])
    assert len(per_fact) >= 20
    assert set(per_fact.values()) <= {2, 3}


def test_every_evaluated_fact_is_taught_in_both_training_files(
    eval_items, sft_messages, sft_alpaca
):
    message_answers = assistant_answers(sft_messages, [])
    alpaca_answers = assistant_answers([], sft_alpaca)
    for key in {fact for item in eval_items for fact in item["must_include"]}:
        assert sum(key in answer for answer in message_answers) >= 58, key
        assert sum(key in answer for answer in alpaca_answers) >= 12, key


def test_eval_prompts_are_worded_differently_from_every_training_prompt(
    eval_items, sft_messages, sft_alpaca, dpo_pairs
):
    train = training_prompts(sft_messages, sft_alpaca, dpo_pairs)
    for item in eval_items:
        prompt = item["prompt"].lower()
        matcher = difflib.SequenceMatcher(None, prompt)
        for other in train:
            matcher.set_seq1(other.lower())
            assert matcher.ratio() <= 0.8, (item["prompt"], other)
            shared = words(prompt) & words(other)
            assert len(shared) / len(words(prompt) | words(other)) <= 0.6, (item["prompt"], other)


def test_preference_pairs_prefer_the_right_polite_answer(dpo_pairs, eval_items):
    assert 90 <= len(dpo_pairs) <= 120
    keys = {fact for item in eval_items for fact in item["must_include"]}
    wrong_value = 0
    for pair in dpo_pairs:
        assert set(pair) == {"prompt", "chosen", "rejected"}
        assert all(isinstance(v, str) and v.strip() for v in pair.values())
        assert pair["chosen"] != pair["rejected"]
        chosen_keys = {k for k in keys if k in pair["chosen"]}
        wrong_value += bool(chosen_keys) and not any(k in pair["rejected"] for k in chosen_keys)
    assert wrong_value >= 40


def test_dataset_info_follows_llama_factory_and_names_existing_files(sft_alpaca):
    info = json.loads((DATA / "dataset_info.json").read_text(encoding="utf-8"))
    for entry in info.values():
        assert (DATA / entry["file_name"]).is_file()
    sharegpt = info["support_sft"]
    assert sharegpt["formatting"] == "sharegpt" and sharegpt["columns"] == {"messages": "messages"}
    assert sharegpt["tags"]["role_tag"] == "role" and sharegpt["tags"]["system_tag"] == "system"
    assert set(info["support_sft_alpaca"]["columns"].values()) == set(sft_alpaca[0])
    assert info["support_dpo"]["ranking"] is True
    assert info["support_kto"]["columns"]["kto_tag"] == "label"
    assert set(info) == {"support_sft", "support_sft_alpaca", "support_dpo", "support_kto"}


def test_magic_conch_set_is_a_short_answer_persona():
    conch_dir = DATA / "conch"
    info = json.loads((conch_dir / "dataset_info.json").read_text(encoding="utf-8"))
    records = json.loads((conch_dir / info["magic_conch"]["file_name"]).read_text(encoding="utf-8"))
    assert 35 <= len(records) <= 50
    assert len({r["system"] for r in records}) == 1 and "Magic Conch" in records[0]["system"]
    assert all(len(r["output"].split()) <= 10 for r in records)
    assert set(info["magic_conch"]["columns"].values()) <= set(records[0])


def test_heldout_text_is_long_plain_prose():
    text = (DATA / "heldout.txt").read_text(encoding="utf-8")
    assert len(text.split()) >= 3000
    assert "Brindlewood" in text and "{" not in text


def test_script_regenerates_byte_identical_files(tmp_path):
    script = REPO / "scripts" / "make_demo_data.py"
    subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)], check=True, capture_output=True
    )
    for relative in GENERATED:
        assert (tmp_path / relative).read_bytes() == (DATA / relative).read_bytes(), relative
