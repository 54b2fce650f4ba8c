"""Loss masks: on the embedded model's own ChatML template, labels are -100 exactly on the tokens that
are not an assistant reply; each assistant reply plus its end-of-turn token carries the loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from slmkit.data import Record, load_records
from slmkit.data.template import IGNORE_INDEX, tokenize_sft
from slmkit.errors import DataError

GOOD = Path(__file__).resolve().parent / "data" / "good"
END_OF_TURN = "<|im_end|>"


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir)


def _trainable_spans(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    spans: list[list[int]] = []
    inside = False
    for token, label in zip(input_ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token  # labels are the ids themselves (the model shifts them)
            if not inside:
                spans.append([])
            spans[-1].append(token)
        inside = label != IGNORE_INDEX
    return spans


def _assistant_texts(record: Record) -> list[str]:
    return [m["content"] for m in record.messages if m["role"] == "assistant"]


@pytest.mark.parametrize(
    "name",
    [
        "alpaca.json",
        "alpaca.csv",
        "sharegpt.jsonl",
        "messages.parquet",
        "preference.jsonl",
        "llamafactory",
    ],
)
def test_mask_covers_exactly_the_assistant_replies(name: str, tokenizer: Any) -> None:
    records = load_records([GOOD / name]).records
    result = tokenize_sft(records, tokenizer, cutoff_len=4096)
    assert not result.problems and len(result.samples) == len(records)
    for record, sample in zip(records, result.samples, strict=True):
        if record.kind == "text":
            assert sample.labels == sample.input_ids
            continue
        full = tokenizer.apply_chat_template(record.messages, tokenize=False)
        assert tokenizer.decode(sample.input_ids) == full  # the model's own rendering, untouched
        spans = [
            tokenizer.decode(span) for span in _trainable_spans(sample.input_ids, sample.labels)
        ]
        assert spans == [text + END_OF_TURN for text in _assistant_texts(record)]
        masked = [
            t
            for t, label in zip(sample.input_ids, sample.labels, strict=True)
            if label == IGNORE_INDEX
        ]
        rest = tokenizer.decode(masked)
        for text in _assistant_texts(record):
            rest = rest.replace("<|im_start|>assistant\n\n", "<|im_start|>assistant\n", 1)
            assert text not in rest  # no reply token is left unlabelled
        assert rest.count("<|im_start|>") == full.count("<|im_start|>")  # every header is masked


def test_multi_turn_and_tool_calls_each_reply_is_labelled(tokenizer: Any) -> None:
    records = load_records([GOOD / "messages.jsonl"]).records
    sample = tokenize_sft(records, tokenizer).samples[2]  # user, tool call, tool result, answer
    spans = [tokenizer.decode(s) for s in _trainable_spans(sample.input_ids, sample.labels)]
    assert len(spans) == 2
    assert spans[0].startswith('{"name": "order_status"') and spans[0].endswith(END_OF_TURN)
    assert spans[1] == "Order K-2001 has shipped." + END_OF_TURN
    assert '{"status": "shipped"}' not in "".join(spans)  # the tool's answer is input, not a target


def test_train_on_prompt_labels_everything(tokenizer: Any) -> None:
    records = load_records([GOOD / "sharegpt.jsonl"]).records
    sample = tokenize_sft(records, tokenizer, train_on_prompt=True).samples[0]
    assert sample.labels == sample.input_ids


@pytest.mark.parametrize("template", ["chatml", "llama2", "alpaca"])
def test_generic_templates_mask_the_replies(template: str, tokenizer: Any) -> None:
    records = load_records([GOOD / "sharegpt.jsonl"]).records
    result = tokenize_sft(records, tokenizer, template=template)
    sample = result.samples[1]
    spans = [tokenizer.decode(s).strip() for s in _trainable_spans(sample.input_ids, sample.labels)]
    eos = tokenizer.eos_token
    assert [s.removesuffix(eos).strip() for s in spans] == _assistant_texts(records[1])
    assert all(s.endswith(eos) for s in spans)
    text = tokenizer.decode(sample.input_ids)
    marker = {"chatml": "<|im_start|>user\n", "llama2": "[INST] ", "alpaca": "### Instruction:\n"}[
        template
    ]
    assert marker in text


def test_model_without_chat_template_is_a_clear_error(tokenizer: Any) -> None:
    import copy

    base = copy.deepcopy(tokenizer)
    base.chat_template = None
    records = load_records([GOOD / "sharegpt.jsonl"]).records
    with pytest.raises(DataError, match=r"no chat template.*--template NAME.*slm data templates"):
        tokenize_sft(records, base)
    assert tokenize_sft(records, base, template="chatml").samples  # the escape hatch works


def test_template_that_drops_replies_is_caught_as_zero_trainable(tokenizer: Any) -> None:
    """A template/mask mismatch that masks everything must be impossible to miss."""
    import copy

    broken = copy.deepcopy(tokenizer)
    broken.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] != 'assistant' %}"
        "{{ m['content'] }}<|im_end|>{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    records = load_records([GOOD / "sharegpt.jsonl"]).records
    result = tokenize_sft(records, broken)
    assert not result.samples
    assert [str(p).split(": ", 1)[0] for p in result.problems] == [r.source for r in records]
    assert all(
        p.severity == "error" and p.field == "(labels)" and "no trainable tokens" in p.message
        for p in result.problems
    )


def test_template_that_does_not_put_the_reply_after_its_prompt_is_refused(
    tokenizer: Any,
) -> None:
    import copy

    odd = copy.deepcopy(tokenizer)  # renders the conversation newest-first
    odd.chat_template = (
        "{% for m in messages|reverse %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    records = load_records([GOOD / "sharegpt.jsonl"]).records
    result = tokenize_sft(records, odd)
    assert not result.samples
    assert [(p.line, p.field, p.severity) for p in result.problems] == [
        (1, "(template)", "error"),
        (2, "(template)", "error"),
    ]
    message = result.problems[0].message
    assert message.startswith("turn 1: the chat template's prompt for this reply ends with")
    assert "cannot be located after its prompt" in message and "slm data templates" in message


def test_conversation_opening_with_the_assistant_is_a_located_problem_not_a_crash(
    tokenizer: Any,
) -> None:
    """SmolLM2's template injects a default system prompt, so a reply at turn 0 cannot be masked alone."""
    record = Record(
        [
            {"role": "assistant", "content": "Welcome!"},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ],
        "chat.jsonl:7",
    )
    result = tokenize_sft([record], tokenizer)
    assert not result.samples
    assert [(p.file, p.line, p.field) for p in result.problems] == [("chat.jsonl", 7, "(template)")]


def test_over_cutoff_samples_are_counted_truncated_or_dropped(tokenizer: Any) -> None:
    records = load_records([GOOD / "messages.jsonl"]).records
    full = tokenize_sft(records, tokenizer, cutoff_len=4096)
    cutoff = sorted(len(s) for s in full.samples)[1]  # the longest sample is over it
    truncated = tokenize_sft(records, tokenizer, cutoff_len=cutoff)
    assert truncated.n_over_cutoff == truncated.n_truncated == 1 and truncated.n_dropped == 0
    assert max(len(s) for s in truncated.samples) == cutoff and len(truncated.samples) == 3
    assert [p.severity for p in truncated.problems] == [
        "warning"
    ] and "truncated" in truncated.problems[0].message
    dropped = tokenize_sft(records, tokenizer, cutoff_len=cutoff, overflow="drop")
    assert (
        dropped.n_dropped == 1
        and len(dropped.samples) == 2
        and "dropped" in dropped.problems[0].message
    )


def test_text_records_are_chunked_with_every_token_labelled(tokenizer: Any) -> None:
    record = Record([], "doc.jsonl:1", kind="text", text="Northwind ships to Iceland. " * 20)
    result = tokenize_sft([record], tokenizer, cutoff_len=32)
    ids = tokenizer(record.text)["input_ids"] + [tokenizer.eos_token_id]
    assert [t for s in result.samples for t in s.input_ids] == ids
    assert all(s.labels == s.input_ids and len(s) <= 32 for s in result.samples)
    assert result.trainable_share == 1.0


def test_slow_tokenizer_fallback_gives_the_same_mask(tokenizer: Any) -> None:
    from slmkit.data.template import render_with_mask, resolve_chat_template

    class WithoutOffsets:  # the real tokenizer, seen as a slow one (no offset mapping)
        is_fast = False

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __call__(self, text: str, **kwargs: Any) -> Any:
            assert "return_offsets_mapping" not in kwargs
            return self.inner(text, **kwargs)

        def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
            return self.inner.apply_chat_template(*args, **kwargs)

    template = resolve_chat_template(tokenizer)
    for record in load_records([GOOD / "sharegpt.jsonl", GOOD / "alpaca.json"]).records:
        fast = render_with_mask(record.messages, tokenizer, template)
        slow = render_with_mask(record.messages, WithoutOffsets(tokenizer), template)
        assert slow == fast
