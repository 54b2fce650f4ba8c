"""Writes tests/data/bad/: one deliberately broken data file per problem kind, plus cases.json that says
where the error must be reported (line and field) and which extra CLI arguments the case needs.

Run from the repository root: `python tests/data/make_bad_corpus.py` (the output is committed).
"""

from __future__ import annotations

import json
from pathlib import Path

BAD = Path(__file__).parent / "bad"
U = {"role": "user", "content": "Where is my parcel?"}
A = {"role": "assistant", "content": "It left the Tromsø hub this morning."}
CASES: list[dict] = []


def jsonl(name: str, rows: list, line: int, field: str, args: list[str] | None = None) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    (BAD / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    CASES.append({"file": name, "line": line, "field": field, "args": args or []})


def raw(name: str, data: bytes, line: int, field: str, args: list[str] | None = None) -> None:
    (BAD / name).write_bytes(data)
    CASES.append({"file": name, "line": line, "field": field, "args": args or []})


def main() -> None:
    BAD.mkdir(exist_ok=True)
    good = {"messages": [U, A]}
    jsonl(
        "invalid_json.jsonl", [good, '{"messages": [{"role": "user", "content": "hi"}'], 2, "(json)"
    )
    raw(
        "invalid_json_array.json",
        b'[\n  {"instruction": "a", "output": "b"}\n  {"instruction": "c", "output": "d"}\n]\n',
        3,
        "(json)",
    )
    raw(
        "single_object.json",
        b'{\n  "instruction": "Return policy?",\n  "output": "Thirty days."\n}\n',
        1,
        "(file)",
    )
    raw("not_utf8.jsonl", json.dumps(good).encode() + b'\n{"text": "caf\xe9"}\n', 2, "(file)")
    raw("utf16.jsonl", json.dumps(good).encode("utf-16"), 1, "(file)")
    raw("empty.jsonl", b"", 1, "(file)")
    raw("empty_array.json", b"[]\n", 1, "(file)")
    raw("whitespace_only.jsonl", b"\n   \n\n", 1, "(file)")
    raw("header_only.csv", b"instruction,input,output\n", 1, "(file)")
    raw("unknown_extension.txt", b"just some words\n", 1, "(file)")
    raw("corrupt.parquet", b"PAR1 this is not really parquet PAR1", 1, "(file)")
    jsonl("record_not_object.jsonl", [good, '["user", "hello"]'], 2, "(record)")
    jsonl("unknown_format.jsonl", [{"question": "q?", "answer": "a."}], 1, "(record)")
    jsonl(
        "mixed_formats.jsonl",
        [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}, good],
        3,
        "(record)",
    )
    jsonl(
        "alpaca_missing_output.jsonl",
        [{"instruction": "a", "output": "b"}, {"instruction": "Return policy?", "input": ""}],
        2,
        "output",
    )
    raw(
        "alpaca_empty_instruction.json",
        b'[\n  {"instruction": "ok", "output": "fine"},\n  {"instruction": "  ", '
        b'"output": "Thirty days."}\n]\n',
        3,
        "instruction",
    )
    jsonl(
        "alpaca_wrong_type_output.jsonl",
        [{"instruction": "How many days?", "output": 30}],
        1,
        "output",
    )
    jsonl(
        "alpaca_bad_history.jsonl",
        [{"instruction": "And then?", "output": "Refund.", "history": [["only one"]]}],
        1,
        "history[0]",
    )
    raw(
        "csv_extra_cells.csv",
        b"instruction,input,output\nfine,,ok\nhi,there,you,extra\n",
        3,
        "(row)",
    )
    jsonl(
        "sharegpt_unknown_role.jsonl",
        [
            {
                "conversations": [
                    {"from": "human", "value": "Hi"},
                    {"from": "robot", "value": "Hello"},
                ]
            }
        ],
        1,
        "conversations[1].from",
    )
    jsonl(
        "sharegpt_missing_value.jsonl",
        [{"conversations": [{"from": "human"}, {"from": "gpt", "value": "Hi"}]}],
        1,
        "conversations[0].value",
    )
    jsonl(
        "sharegpt_ends_with_human.jsonl",
        [
            {
                "conversations": [
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hello"},
                    {"from": "human", "value": "Bye"},
                ]
            }
        ],
        1,
        "conversations[2]",
    )
    jsonl(
        "sharegpt_not_list.jsonl", [{"conversations": "human: hi / gpt: hello"}], 1, "conversations"
    )
    jsonl(
        "messages_unknown_role.jsonl",
        [good, {"messages": [U, {"role": "bot", "content": "Hi"}]}],
        2,
        "messages[1].role",
    )
    jsonl(
        "messages_empty_content.jsonl",
        [{"messages": [U, {"role": "assistant", "content": ""}]}],
        1,
        "messages[1].content",
    )
    jsonl(
        "messages_no_assistant.jsonl",
        [{"messages": [U, {"role": "user", "content": "Hello?"}]}],
        1,
        "messages",
    )
    jsonl(
        "messages_ends_with_user.jsonl",
        [{"messages": [U, A, {"role": "user", "content": "Thanks"}]}],
        1,
        "messages[2]",
    )
    jsonl(
        "messages_content_wrong_type.jsonl",
        [{"messages": [{"role": "user", "content": 42}, A]}],
        1,
        "messages[0].content",
    )
    jsonl(
        "messages_bad_tool_calls.jsonl",
        [
            {
                "messages": [
                    U,
                    {"role": "assistant", "content": None, "tool_calls": [{"function": "track"}]},
                ]
            }
        ],
        1,
        "messages[1].tool_calls",
    )
    jsonl(
        "messages_not_list.jsonl", [{"messages": {"role": "user", "content": "hi"}}], 1, "messages"
    )
    jsonl(
        "preference_missing_rejected.jsonl",
        [{"prompt": "Refund?", "chosen": "Within 30 days.", "rejected": None}],
        1,
        "rejected",
    )
    jsonl(
        "preference_prompt_ends_with_assistant.jsonl",
        [{"prompt": [U, A], "chosen": "Yes.", "rejected": "No."}],
        1,
        "prompt",
    )
    jsonl(
        "preference_chosen_wrong_role.jsonl",
        [{"prompt": "Refund?", "chosen": {"role": "user", "content": "x"}, "rejected": "No."}],
        1,
        "chosen.role",
    )
    jsonl("text_empty.jsonl", [{"text": "Fine document."}, {"text": ""}], 2, "text")
    jsonl(
        "eval_leak.jsonl",
        [{"prompt": "What is the warranty on tents?", "must_include": ["2-year"]}],
        1,
        "prompt",
        ["--eval", "{file}", "tests/data/good/messages.jsonl"],
    )
    info = BAD / "llamafactory_bad_formatting"
    info.mkdir(exist_ok=True)
    (info / "dataset_info.json").write_text(
        json.dumps({"shop": {"file_name": "shop.json", "formatting": "chatml"}}, indent=2) + "\n"
    )
    (info / "shop.json").write_text(json.dumps([{"instruction": "a", "output": "b"}]) + "\n")
    CASES.append(
        {
            "file": "llamafactory_bad_formatting/dataset_info.json",
            "line": 2,
            "field": "shop.formatting",
            "args": [],
            "target": "llamafactory_bad_formatting",
        }
    )
    missing = BAD / "llamafactory_missing_file"
    missing.mkdir(exist_ok=True)
    (missing / "dataset_info.json").write_text(
        json.dumps({"shop": {"file_name": "nowhere.json"}}, indent=2) + "\n"
    )
    CASES.append(
        {
            "file": "llamafactory_missing_file/nowhere.json",
            "line": 1,
            "field": "(file)",
            "args": [],
            "target": "llamafactory_missing_file",
        }
    )
    _parquet()
    (BAD / "cases.json").write_text(
        json.dumps(CASES, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def _parquet() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"instruction": "Gift wrap?", "output": "Yes, 3.50 per item."},
        {"instruction": "Loyalty?", "output": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), BAD / "parquet_missing_output.parquet")
    CASES.append(
        {"file": "parquet_missing_output.parquet", "line": 2, "field": "output", "args": []}
    )


if __name__ == "__main__":
    main()
