"""The real `slm data` CLI: every broken file gives a located error and exit 2 (never a traceback);
good files validate, round-trip through convert, split deterministically, and show stats."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slmkit.data import load_records

DATA = Path(__file__).resolve().parent / "data"
BAD_CASES = json.loads((DATA / "bad" / "cases.json").read_text(encoding="utf-8"))
GOOD_FILES = sorted(p.name for p in (DATA / "good").iterdir() if p.is_file())


def _case_args(case: dict, tiny_model: Path | None) -> list[str]:
    target = f"tests/data/bad/{case.get('target', case['file'])}"
    args = [
        a.replace("{file}", target).replace("{tiny_model}", str(tiny_model)) for a in case["args"]
    ]
    if "{file}" not in json.dumps(case["args"]):
        args.insert(0, target)
    if "--model" not in args:
        args += ["--model", "none"]  # structural checks need no tokenizer
    return args


def test_bad_corpus_covers_every_problem_kind() -> None:
    files = {c["file"].split("/")[0] for c in BAD_CASES}
    assert len(BAD_CASES) >= 25
    for kind in (
        "invalid_json",
        "not_utf8",
        "empty",
        "missing_output",
        "wrong_type",
        "unknown_role",
        "ends_with",
        "mixed_formats",
        "eval_leak",
        "llamafactory",
    ):
        assert any(kind in f for f in files), kind


@pytest.mark.parametrize("case", BAD_CASES, ids=[c["file"] for c in BAD_CASES])
def test_bad_file_gives_located_error_and_exit_2(
    case: dict, slm, request: pytest.FixtureRequest
) -> None:
    tiny = request.getfixturevalue("tiny_model_dir") if "{tiny_model}" in case["args"] else None
    result = slm("data", "validate", *_case_args(case, tiny))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    located = f"tests/data/bad/{case['file']}:{case['line']}: {case['field']}: "
    assert located in result.stdout, output
    assert "(expected" in output.split(located, 1)[1].splitlines()[0]


def test_good_files_validate_with_the_embedded_template(slm, tiny_model_dir: Path) -> None:
    files = [f"tests/data/good/{name}" for name in GOOD_FILES] + ["tests/data/good/llamafactory"]
    result = slm("data", "validate", *files, "--model", str(tiny_model_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: 21 valid record(s), 0 error(s), 0 warning(s)" in result.stdout
    table_rows = [
        line for line in result.stdout.splitlines() if line.startswith("│ tests/data/good/")
    ]
    assert len(table_rows) == len(files) - 1 + 4  # the LLaMA-Factory folder holds four datasets
    shares = [float(cell.strip().rstrip("%")) for row in table_rows for cell in row.split("│")[6:7]]
    assert all(0 < share <= 100 for share in shares)


def test_max_errors_limits_the_listing(slm) -> None:
    result = slm(
        "data",
        "validate",
        "--model",
        "none",
        "--max-errors",
        "2",
        *[f"tests/data/bad/{c['file']}" for c in BAD_CASES[:6]],
    )
    assert result.returncode == 2
    assert result.stdout.count("tests/data/bad/") >= 2
    assert "more problem(s) (raise --max-errors to see them)" in result.stdout


@pytest.mark.parametrize(
    "name",
    [
        "alpaca.json",
        "sharegpt.jsonl",
        "messages.jsonl",
        "preference.jsonl",
        "alpaca.csv",
        "messages.parquet",
        "text.jsonl",
    ],
)
def test_good_files_round_trip_through_convert(name: str, tmp_path: Path) -> None:
    """file -> every target -> back: the normalised records are unchanged (in-process, fast)."""
    from slmkit.data.convert import convert_records, write_rows

    original = load_records([DATA / "good" / name]).records
    targets = ["messages", "sharegpt"] if "messages" in name else ["messages", "alpaca", "sharegpt"]
    for target in targets:
        rows, problems = convert_records(original, target)
        assert not problems, problems
        out = tmp_path / f"{target}.jsonl"
        write_rows(rows, out)
        back = load_records([out])
        assert not back.problems, back.problems
        assert back.formats[next(iter(back.formats))] in (target, "preference", "text")
        assert [(r.messages, r.rejected, r.text, r.kind) for r in back.records] == [
            (r.messages, r.rejected, r.text, r.kind) for r in original
        ]


def test_convert_cli_writes_and_refuses_what_the_target_cannot_express(slm, tmp_path: Path) -> None:
    out = tmp_path / "as_alpaca.json"
    result = slm(
        "data", "convert", "tests/data/good/sharegpt.jsonl", "--to", "alpaca", "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert rows[1]["history"] == [["Hi", "Hello! How can I help?"]]
    assert rows[1]["system"] == "You are a polite support agent."
    refused = slm(
        "data",
        "convert",
        "tests/data/good/messages.jsonl",
        "--to",
        "alpaca",
        "-o",
        str(tmp_path / "x.jsonl"),
    )
    assert refused.returncode == 2
    assert (
        "tests/data/good/messages.jsonl:3: (record): only alternating user/assistant turns"
        in refused.stdout
    )
    assert not (tmp_path / "x.jsonl").exists()


def test_split_cli_is_deterministic(slm, tmp_path: Path) -> None:
    files = [
        "tests/data/good/alpaca.json",
        "tests/data/good/messages.jsonl",
        "tests/data/good/sharegpt.jsonl",
    ]
    runs = []
    for name in ("a", "b"):
        result = slm(
            "data",
            "split",
            *files,
            "--val-ratio",
            "0.25",
            "--seed",
            "7",
            "-o",
            str(tmp_path / name),
        )
        assert result.returncode == 0, result.stderr
        runs.append([(tmp_path / name / f).read_text() for f in ("train.jsonl", "val.jsonl")])
    assert runs[0] == runs[1]
    assert len(runs[0][1].splitlines()) == 2 and len(runs[0][0].splitlines()) == 6


def test_stats_cli_shows_histogram_cutoff_share_and_tokens(slm, tiny_model_dir: Path) -> None:
    result = slm(
        "data",
        "stats",
        "tests/data/good/messages.jsonl",
        "tests/data/good/alpaca.json",
        "tests/data/good/text.jsonl",
        "--model",
        str(tiny_model_dir),
        "--cutoff-len",
        "40",
        "--epochs",
        "3",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "messages" in out and "alpaca" in out and "text" in out
    assert re.search(r"│ total\s+│ 8\s+│", out)
    counts = [int(m) for m in re.findall(r"^\s*\d+-\s*\d+ \| █*\s+(\d+)", out, flags=re.M)]
    assert len(counts) == 10 and sum(counts) == 8
    assert "(over cutoff)" in out
    assert "over cutoff_len 40:" in out and "tokens per epoch:" in out and "for 3 epoch(s):" in out


def test_unknown_format_option_is_a_clear_error(slm) -> None:
    result = slm(
        "data", "validate", "tests/data/good/alpaca.json", "--format", "chatml", "--model", "none"
    )
    assert result.returncode == 2
    assert "--format 'chatml': unknown format (expected one of auto, alpaca" in result.stderr
    assert "Traceback" not in result.stderr


def test_stats_and_split_are_stage_functions_the_cli_only_calls(tmp_path: Path) -> None:
    from slmkit.data.config import DataConfig, SplitConfig
    from slmkit.data.split import split_data
    from slmkit.data.stats import data_stats

    files = [Path("tests/data/good/alpaca.json"), Path("tests/data/good/messages.jsonl")]
    stats = data_stats(DataConfig(files=files))
    assert stats.records == sum(len(load_records([f]).records) for f in files)
    assert not stats.tokenized and stats.left_out == 0
    result = split_data(SplitConfig(files=files, output_dir=tmp_path, val_ratio=0.25, seed=7))
    assert result.files == [tmp_path / "train.jsonl", tmp_path / "val.jsonl"]
    written = [len(f.read_text().splitlines()) for f in result.files]
    assert written == [result.train, result.val] and sum(written) == stats.records


def test_a_bad_data_option_names_the_option(slm) -> None:
    result = slm(
        "data", "validate", "tests/data/good/alpaca.json", "--model", "none", "--cutoff-len", "8"
    )
    assert result.returncode == 2
    assert "--cutoff-len: Input should be greater than or equal to 16" in result.stderr
    result = slm(
        "data", "validate", "tests/data/good/alpaca.json", "--model", "none", "--overflow", "keep"
    )
    assert (
        result.returncode == 2
        and "--overflow: Input should be 'truncate' or 'drop'" in result.stderr
    )
