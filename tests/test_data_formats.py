"""Readers, format detection and normalisation: every format ends as the same Record; problems are
collected with file:line and field, and raise_for_errors names the first one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmkit.data import DataLoadResult, Record, load_records
from slmkit.errors import DataError

GOOD = Path(__file__).resolve().parent / "data" / "good"
USER, REPLY = "Where is my parcel?", "It left the Tromsø hub this morning."


def _write(tmp_path: Path, name: str, rows: list[dict] | str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    text = (
        rows
        if isinstance(rows, str)
        else "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    )
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"instruction": USER, "input": "", "output": REPLY}, "alpaca"),
        (
            {"conversations": [{"from": "human", "value": USER}, {"from": "gpt", "value": REPLY}]},
            "sharegpt",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": USER},
                    {"role": "assistant", "content": REPLY},
                ]
            },
            "messages",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": USER}]},
                    {"role": "assistant", "content": REPLY},
                ]
            },
            "messages",
        ),
    ],
)
def test_every_sft_format_normalises_to_the_same_messages(
    tmp_path: Path, row: dict, fmt: str
) -> None:
    result = load_records([_write(tmp_path, "d.jsonl", [row])])
    assert not result.problems
    assert result.formats == {str(tmp_path / "d.jsonl"): fmt} or list(result.formats.values()) == [
        fmt
    ]
    assert result.records[0].messages == [
        {"role": "user", "content": USER},
        {"role": "assistant", "content": REPLY},
    ]
    assert result.records[0].kind == "sft" and result.records[0].source.endswith("d.jsonl:1")


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": USER, "chosen": REPLY, "rejected": "Go away."},
        {
            "prompt": [{"role": "user", "content": USER}],
            "chosen": [{"role": "assistant", "content": REPLY}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        },
        {
            "chosen": [{"role": "user", "content": USER}, {"role": "assistant", "content": REPLY}],
            "rejected": [
                {"role": "user", "content": USER},
                {"role": "assistant", "content": "Go away."},
            ],
        },
        {"instruction": USER, "input": "", "chosen": REPLY, "rejected": "Go away."},
        {
            "conversations": [{"from": "human", "value": USER}],
            "chosen": {"from": "gpt", "value": REPLY},
            "rejected": {"from": "gpt", "value": "Go away."},
        },
    ],
)
def test_every_preference_shape_normalises_to_prompt_plus_branches(
    tmp_path: Path, row: dict
) -> None:
    result = load_records([_write(tmp_path, "p.jsonl", [row])])
    assert not result.problems, result.problems
    record = result.records[0]
    assert record.kind == "preference"
    assert record.messages == [
        {"role": "user", "content": USER},
        {"role": "assistant", "content": REPLY},
    ]
    assert record.rejected == [
        {"role": "user", "content": USER},
        {"role": "assistant", "content": "Go away."},
    ]


def test_alpaca_input_system_and_history_become_turns() -> None:
    records = load_records([GOOD / "alpaca.json"]).records
    assert records[1].messages[0] == {
        "role": "system",
        "content": "You are a concise support agent.",
    }
    assert (
        records[1].messages[1]["content"]
        == "Summarise the order status.\nOrder K-1182: packed, awaiting courier pickup."
    )
    assert [m["role"] for m in records[2].messages] == ["user", "assistant", "user", "assistant"]
    assert records[2].source == "tests/data/good/alpaca.json:13" or records[2].source.endswith(
        "alpaca.json:13"
    )


def test_sharegpt_function_call_and_observation_become_tool_messages(tmp_path: Path) -> None:
    row = {
        "conversations": [
            {"from": "human", "value": "Status of K-9?"},
            {
                "from": "function_call",
                "value": '{"name": "order_status", "arguments": {"id": "K-9"}}',
            },
            {"from": "observation", "value": "shipped"},
            {"from": "gpt", "value": "It shipped."},
        ]
    }
    messages = load_records([_write(tmp_path, "t.jsonl", [row])]).records[0].messages
    assert messages[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "order_status", "arguments": {"id": "K-9"}}}
        ],
    }
    assert messages[2] == {"role": "tool", "content": "shipped"}


def test_utf8_bom_is_tolerated_and_csv_json_cells_are_parsed(tmp_path: Path) -> None:
    bom = _write(tmp_path, "bom.jsonl", [{"text": "café"}], encoding="utf-8-sig")
    csv_path = _write(
        tmp_path,
        "conv.csv",
        'conversations\n"[{""from"": ""human"", ""value"": ""Hi""}, '
        '{""from"": ""gpt"", ""value"": ""Hello""}]"\n',
    )
    result = load_records([bom, csv_path])
    assert not result.problems
    assert result.records[0].text == "café"
    assert result.records[1].messages[-1] == {"role": "assistant", "content": "Hello"}
    assert result.records[1].source.endswith("conv.csv:2")


def test_format_override_reads_rows_as_the_given_format(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "o.jsonl", [{"text": "plain", "instruction": "not really alpaca", "output": "x"}]
    )
    assert load_records([path]).records[0].kind == "sft"  # auto: instruction/output wins
    forced = load_records([path], fmt="text")
    assert forced.records[0].kind == "text" and forced.records[0].text == "plain"
    with pytest.raises(ValueError, match="unknown format"):
        load_records([path], fmt="chatml")


def test_json_array_rows_know_their_lines_and_mixed_format_is_located(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "a.json",
        '[\n  {"text": "one"},\n\n  {"text": "two"},\n  {"instruction": "q", "output": "a"}\n]\n',
    )
    result = load_records([path])
    assert [r.source.rsplit(":", 1)[1] for r in result.records] == ["2", "4"]
    assert [(p.line, p.field) for p in result.problems] == [(5, "(record)")]
    assert "looks like alpaca but this file is text" in result.problems[0].message


def test_llamafactory_dataset_info_is_read_as_is() -> None:
    result = load_records([GOOD / "llamafactory"])
    assert not result.problems
    assert sorted(set(result.formats.values())) == ["alpaca", "preference", "sharegpt", "text"]
    alpaca = [r for r in result.records if r.file.endswith("support_alpaca.json")]
    assert alpaca[1].messages[0] == {
        "role": "user",
        "content": "What does code W-7 mean?\nSeen on a warranty claim.",
    }
    chat = next(r for r in result.records if r.file.endswith("support_chat.json"))
    assert chat.messages[0] == {"role": "system", "content": "Be brief."}
    only = load_records([GOOD / "llamafactory" / "dataset_info.json"], names=["store_docs"])
    assert [r.kind for r in only.records] == ["text"]
    unknown = load_records([GOOD / "llamafactory"], names=["nope"])
    assert (
        unknown.problems[0].field == "(dataset)" and "support_alpaca" in unknown.problems[0].message
    )
    remote = load_records([GOOD / "llamafactory"], names=["remote_set"])
    assert (
        remote.problems[0].field == "remote_set.file_name"
        and "hf_hub_url" in remote.problems[0].message
    )


def test_raise_for_errors_names_the_first_problem_and_counts_the_rest(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "e.jsonl",
        [{"instruction": "a"}, {"instruction": "b"}, {"instruction": "c", "output": "d"}],
    )
    result = load_records([path])
    assert len(result.records) == 1 and len(result.errors) == 2
    with pytest.raises(DataError) as info:
        result.raise_for_errors()
    message = str(info.value)
    assert message.startswith(f"{result.problems[0].file}:1: output: missing (expected the answer")
    assert "(and 1 more error(s)" in message
    DataLoadResult(records=result.records).raise_for_errors()  # no errors: silent


def test_record_prompt_messages_and_key() -> None:
    record = Record(
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
        ],
        "x.jsonl:1",
    )
    assert record.prompt_messages() == record.messages[:2]
    assert record.file == "x.jsonl"
    assert record.key() == Record(list(record.messages), "y.jsonl:9").key()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", ":2: invalid JSON: Expecting property name"),
        ("[1]", ":2: expected a JSON object, got array"),
    ],
)
def test_every_whole_file_jsonl_reader_names_the_bad_line_alike(
    tmp_path: Path, line: str, message: str
) -> None:
    # eval sets, export prompt files and retrieval question sets share one reader
    from slmkit.errors import SlmError
    from slmkit.evaluate.evalset import load_eval_set
    from slmkit.export.agreement import load_prompts
    from slmkit.rag.metrics import load_questions

    firsts = (
        {"prompt": "Hi?", "reference": "Hello"},
        {"prompt": "Hi?"},
        {"question": "Refunds?", "source": "returns.md", "contains": "30 days"},
    )
    loaders = (load_eval_set, lambda p: load_prompts(p, 10), load_questions)
    for first, load in zip(firsts, loaders, strict=True):
        path = tmp_path / "rows.jsonl"
        path.write_text(json.dumps(first) + "\n" + line + "\n")
        with pytest.raises(SlmError) as caught:
            load(path)
        assert str(caught.value).startswith(f"{path}{message}"), str(caught.value)
