"""Packing loses no token and mixes no samples' attention; collators pad without leaking loss;
length grouping cuts padding; splits are deterministic; leakage and preference rows."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from slmkit.data import Record, load_records
from slmkit.data.leakage import EvalPrompt, find_leakage
from slmkit.data.packing import (
    LengthGroupedSampler,
    PackedBatchCollator,
    PaddingCollator,
    length_grouped_order,
    pack_samples,
    padding_waste,
)
from slmkit.data.preference import to_preference_rows
from slmkit.data.split import split_records
from slmkit.data.template import IGNORE_INDEX, TokenizedSample
from slmkit.errors import DataError

GOOD = Path(__file__).resolve().parent / "data" / "good"


def _samples(lengths: list[int], seed: int = 0) -> list[TokenizedSample]:
    rng = random.Random(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = [rng.randrange(10, 1000) for _ in range(n)]
        labels = [IGNORE_INDEX] * (n // 2) + ids[n // 2 :]
        out.append(TokenizedSample(ids, labels, f"f.jsonl:{i + 1}"))
    return out


def test_packing_loses_no_token_and_respects_the_block() -> None:
    rng = random.Random(1)
    samples = _samples([rng.randrange(3, 60) for _ in range(200)])
    rows = pack_samples(samples, block_size=128)
    assert all(len(r) <= 128 for r in rows)
    assert sorted(s for r in rows for s in r.sources) == sorted(s.source for s in samples)
    by_source = {s.source: s for s in samples}
    for row in rows:
        offset = 0
        for source in row.sources:
            sample = by_source[source]
            n = len(sample)
            assert row.input_ids[offset : offset + n] == sample.input_ids
            assert row.position_ids[offset : offset + n] == list(range(n))
            assert (
                row.labels[offset] == IGNORE_INDEX
            )  # never predict a sample's first token from the last one
            assert row.labels[offset + 1 : offset + n] == sample.labels[1:]
            offset += n
        assert offset == len(row)
    total = sum(len(s) for s in samples)
    assert len(rows) <= total // 128 + 2  # best-fit leaves little room unused


def test_packing_refuses_a_sample_longer_than_the_block() -> None:
    with pytest.raises(
        DataError, match="f.jsonl:2: sample of 40 tokens is longer than the packing block of 32"
    ):
        pack_samples(_samples([10, 40]), block_size=32)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    return model.eval()


@pytest.mark.parametrize("flatten", [True, False])
def test_packed_rows_give_the_same_logits_as_each_sample_alone(
    tiny_model: Any, flatten: bool
) -> None:
    """sdpa on CPU: position_ids restarts + no attention_mask + use_cache=False -> block-diagonal attention."""
    import torch

    samples = _samples([7, 12, 5, 9, 16, 3], seed=3)
    rows = pack_samples(samples, block_size=24)
    batch = PackedBatchCollator(pad_token_id=0, flatten=flatten)(rows)
    assert "attention_mask" not in batch and batch["use_cache"] is False
    assert len(rows) >= 2 and batch["input_ids"].size(0) == (1 if flatten else len(rows))
    by_source = {s.source: s for s in samples}
    with torch.no_grad():
        logits = tiny_model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        checked = offset = 0
        for r, row in enumerate(rows):
            batch_index, offset = (0, offset) if flatten else (r, 0)
            for source in row.sources:
                ids = by_source[source].input_ids
                alone = tiny_model(input_ids=torch.tensor([ids])).logits[0]
                packed = logits[batch_index, offset : offset + len(ids)]
                torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-4)
                offset += len(ids)
                checked += 1
    assert checked == len(samples)


def test_without_use_cache_false_packed_samples_would_leak(tiny_model: Any) -> None:
    """Why the collator sets use_cache=False: with the config default a DynamicCache is created, the
    packed-sequence detection in masking_utils is skipped, and later samples attend to earlier ones."""
    import torch

    samples = _samples([6, 6], seed=5)
    batch = PackedBatchCollator(pad_token_id=0)(pack_samples(samples, block_size=12))
    with torch.no_grad():
        leaky = tiny_model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True
        ).logits
        clean = tiny_model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
    assert torch.allclose(
        leaky[0, :6], clean[0, :6], atol=1e-5
    )  # the first sample sees only itself anyway
    assert not torch.allclose(leaky[0, 6:], clean[0, 6:], atol=1e-3)  # the second one saw the first


def test_padding_collator_pads_to_the_longest_and_masks_padding() -> None:
    samples = _samples([3, 6, 4])
    batch = PaddingCollator(pad_token_id=2, pad_to_multiple_of=8)(samples)
    assert tuple(batch["input_ids"].shape) == (3, 8)
    assert batch["attention_mask"].sum(1).tolist() == [3, 6, 4]
    assert batch["input_ids"][0, 3:].tolist() == [2] * 5
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert batch["labels"][1, :6].tolist() == samples[1].labels


def test_length_grouped_order_is_a_deterministic_permutation_with_less_padding() -> None:
    rng = random.Random(2)
    lengths = [rng.randrange(5, 300) for _ in range(400)]
    order = length_grouped_order(lengths, batch_size=8, seed=0)
    assert sorted(order) == list(range(400))
    assert order == length_grouped_order(lengths, batch_size=8, seed=0)
    assert order != length_grouped_order(lengths, batch_size=8, seed=1)
    shuffled = list(range(400))
    random.Random(0).shuffle(shuffled)
    assert padding_waste(lengths, order, 8) < padding_waste(lengths, shuffled, 8) / 3
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert sorted(first) == sorted(sampler) and first != list(sampler) and len(sampler) == 400


def _records(n: int) -> list[Record]:
    return [
        Record(
            [
                {"role": "user", "content": f"question number {i}"},
                {"role": "assistant", "content": "a"},
            ],
            f"t.jsonl:{i + 1}",
        )
        for i in range(n)
    ]


def test_split_is_deterministic_by_seed_and_ratio() -> None:
    records = _records(50)
    train, val = split_records(records, 0.2, seed=42)
    assert len(val) == 10 and len(train) == 40
    assert {r.source for r in train} | {r.source for r in val} == {r.source for r in records}
    again = split_records(records, 0.2, seed=42)
    assert [r.source for r in again[1]] == [r.source for r in val]
    assert [r.source for r in split_records(records, 0.2, seed=43)[1]] != [r.source for r in val]
    assert split_records(records, 0.0, seed=1) == (records, [])


def test_split_keeps_records_with_the_same_prompt_together() -> None:
    records = _records(20) + _records(20)  # every prompt twice
    for seed in range(5):
        train, val = split_records(records, 0.25, seed=seed)
        assert not {r.messages[0]["content"] for r in train} & {
            r.messages[0]["content"] for r in val
        }


def test_leakage_finds_exact_and_near_duplicate_prompts() -> None:
    train = load_records([GOOD / "messages.jsonl"]).records
    evals = [
        EvalPrompt("what is the WARRANTY on tents ?", "eval.jsonl:1"),
        EvalPrompt("Can I change my delivery address please?", "eval.jsonl:2"),
        EvalPrompt("Do you sell gift cards?", "eval.jsonl:3"),
    ]
    problems = find_leakage(train, evals, threshold=0.6)
    assert [(p.line, p.severity) for p in problems] == [(1, "error"), (2, "warning")]
    assert (
        "tests/data/good/messages.jsonl:1" in problems[0].message
        or "messages.jsonl:1" in problems[0].message
    )
    assert "near-duplicate" in problems[1].message


def test_preference_rows_for_dpo_are_the_inference_prompt_and_each_answer(
    embedded_model_dir: Path,
) -> None:
    from transformers import AutoTokenizer

    from slmkit.data.template import ChatRenderer, resolve_chat_template

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    renderer = ChatRenderer(tokenizer, resolve_chat_template(tokenizer))
    records = load_records(
        [GOOD / "preference.jsonl", GOOD / "llamafactory"], names=["support_dpo"]
    ).records
    rows = to_preference_rows(records, renderer)
    prompt = [{"role": "user", "content": "Can I return a used sleeping bag?"}]
    expected = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(rows[0]["prompt_ids"]) == expected
    assert tokenizer.decode(rows[0]["chosen_ids"]) == (
        "Used sleeping bags can be exchanged within 30 days but not refunded.<|im_end|>"
    )
    assert tokenizer.decode(rows[0]["rejected_ids"]) == "No. Read the policy.<|im_end|>"
    assert tokenizer.decode(rows[2]["rejected_ids"]) == "You probably broke it yourself.<|im_end|>"
    with pytest.raises(DataError, match="not a preference pair"):
        to_preference_rows(_records(1), renderer)
