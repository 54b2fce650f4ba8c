"""`slm distill` against a real `slm serve default` as the teacher URL: a run SIGKILLed after a few
answers resumes without duplicates; a teacher that answers 429 (its queue holds one request) is
retried with backoff, and prompts it never answered are asked again on the next run; filters are
counted and the counts add up; the output passes `slm data validate`. Bad input ends in one line.
A recipe's `distill:` section, and the pipeline stage that runs it, fingerprinted like the others."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve_helpers import REPO, ServerProcess, needs_llama_server
from slmkit.config import load_config
from slmkit.distill.config import DistillSettings
from slmkit.distill.run import DistillIncomplete, check_complete, distill, done_keys
from slmkit.distill.teacher import TeacherError
from slmkit.errors import ConfigError, DataError
from slmkit.recipe import Recipe, load_recipe

# the teacher's queue holds one request: a second one in flight is answered 429
CONFIG = {"llamacpp": {"ctx_size": 1024, "parallel": 1, "threads": 1}, "limits": {"max_queue": 1}}
PROMPTS = [
    {"id": "capital", "prompt": "Name the capital of France."},
    {"id": "rome", "prompt": "Name the capital of Italy.", "must_include": ["zebra-quantum-42"]},
    {"id": "story", "prompt": "Write a long story about a dragon who learns to cook."},
    {"id": "fruit", "prompt": "Name a fruit."},
    {"id": "poem", "prompt": "Write a poem about the sea with many verses."},
    {"prompt": "Explain in detail how a car engine works, step by step."},
    {"prompt": "Explain in detail how a car engine works, step by step."},  # a duplicate
    {"messages": [{"role": "user", "content": "Describe a forest walk in autumn."}]},
]
UNIQUE = len(PROMPTS) - 1
MAX_CHARS = 40  # "The capital of France is Paris." (and of Italy) fit; 12 tokens of a story do not


def slm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slmkit.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def distill_args(teacher: str, prompts: Path, out: Path, *extra: str) -> list[str]:
    return [
        "distill",
        "--teacher",
        teacher,
        "--prompts",
        str(prompts),
        "-o",
        str(out),
        "--max-tokens",
        "12",
        "--max-answer-chars",
        str(MAX_CHARS),
        "--keep-truncated",  # cut-off answers then meet the length filter instead
        *extra,
    ]


def settings(teacher: str, prompts: Path, **extra: object) -> DistillSettings:
    """The settings of `distill_args`, for runs in this process."""
    return DistillSettings(
        teacher=teacher,
        prompts=str(prompts),
        max_tokens=12,
        max_answer_chars=MAX_CHARS,
        keep_truncated=True,
        **extra,
    )


def counts(stdout: str) -> dict[str, int]:
    """The counts table: `│ kept │ 3 │` -> {"kept": 3}."""
    return {
        name.strip(): int(value)
        for name, value in re.findall(r"│ ([a-z][a-z_ :()]+?)\s*│ (\d+)\s*│", stdout)
    }


def ids(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def teacher():
    with ServerProcess(["default"], config=CONFIG) as server:
        yield server


@pytest.mark.slow
@needs_llama_server
def test_killed_run_resumes_without_duplicates_and_counts_add_up(
    teacher: ServerProcess, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in PROMPTS))
    out = tmp_path / "data.jsonl"
    rejected = tmp_path / "data.jsonl.rejected.jsonl"
    url = teacher.base_url + "/v1"

    # 1. one request at a time, SIGKILLed once a prompt is done
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slmkit.cli",
            *distill_args(url, prompts, out, "--concurrency", "1"),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not ids(out) + ids(rejected) and proc.poll() is None:
        assert time.monotonic() < deadline, "no answer within 240 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it was killed"
    done_at_kill = set(ids(out) + ids(rejected))
    assert 1 <= len(done_at_kill) < UNIQUE

    # 2. three at once against a queue of one, no retries: the 429s leave prompts unanswered
    first_429s = teacher.metric("slm_requests_total", status="429")
    partial = distill(settings(url, prompts, concurrency=3, retries=0), out)
    assert partial.counts["done_before"] == len(done_at_kill)
    assert partial.counts["failed"] >= 1 and "HTTP 429" in partial.failures[0]
    with pytest.raises(DistillIncomplete, match="run the same command again") as incomplete:
        check_complete(partial)
    assert incomplete.value.exit_code == 1
    assert teacher.metric("slm_requests_total", status="429") > first_429s
    assert len(set(ids(out) + ids(rejected))) == len(ids(out) + ids(rejected)) < UNIQUE

    # 3. two at once with retries and backoff: every prompt is answered, none twice
    before_429s = teacher.metric("slm_requests_total", status="429")
    key = {"TEACHER_KEY": "sk-distill-secret-0042"}  # the gateway has no keys: any key is fine
    more = ("--concurrency", "2", "--retries", "8", "--api-key-env", "TEACHER_KEY")
    final = slm(*distill_args(url, prompts, out, *more), env=key)
    assert final.returncode == 0, final.stderr
    assert key["TEACHER_KEY"] not in final.stdout + final.stderr
    table = counts(final.stdout)
    assert table["no answer (failed)"] == 0
    assert teacher.metric("slm_requests_total", status="429") > before_429s  # retried, not lucky
    kept, dropped = ids(out), ids(rejected)
    assert len(kept) + len(dropped) == len(set(kept + dropped)) == UNIQUE
    assert table["duplicate (skipped)"] == 1 and table["in the file"] == len(PROMPTS)
    reasons = [json.loads(line)["reason"] for line in rejected.read_text().splitlines()]
    rejected_counts = {k.removeprefix("rejected: "): v for k, v in table.items() if "rejected" in k}
    assert table["done before (skipped)"] + table["duplicate (skipped)"] + table["kept"] + sum(
        rejected_counts.values()
    ) == len(PROMPTS)
    assert table["kept"] + sum(rejected_counts.values()) == UNIQUE - table["done before (skipped)"]
    for reason, n in rejected_counts.items():  # the sidecar also holds the earlier runs' rows
        assert reasons.count(reason) >= n
    assert len(reasons) == len(dropped)

    # filters: the impossible fact is rejected, long answers are too_long, short ones kept
    by_id = {json.loads(line)["id"]: json.loads(line) for line in rejected.read_text().splitlines()}
    assert by_id["rome"]["reason"] == "must_include"
    assert "zebra-quantum-42" in by_id["rome"]["detail"]
    assert reasons.count("too_long") >= 1 and "capital" in kept
    for row in by_id.values():
        if row["reason"] == "too_long":
            assert len(row["answer"]) > MAX_CHARS
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(len(row["messages"][-1]["content"]) <= MAX_CHARS for row in rows)
    assert all(row["messages"][-1]["role"] == "assistant" for row in rows)

    # 4. the data validates as SFT data; a run with nothing left to do starts no teacher
    valid = slm("data", "validate", str(out))
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert f"ok: {len(kept)} valid record(s)" in valid.stdout
    again = distill(settings("http://127.0.0.1:1/v1", prompts), out)
    assert again.counts["done_before"] == UNIQUE and not again.counts["accepted"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--teacher", "ftp://host/v1"], "--teacher ftp://host/v1: unsupported URL scheme 'ftp'"),
        (["--prompts", "BAD"], "bad.jsonl:2: prompt: give either `prompt`"),
    ],
    ids=["url-scheme", "bad-row"],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    good = tmp_path / "good.txt"
    good.write_text("Say hi.\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Say hi."}\n{"promt": "typo"}\n')
    given = dict(zip(args[::2], args[1::2], strict=True))
    prompts = given.get("--prompts", str(good)).replace("BAD", str(bad))
    teacher = given.get("--teacher", "http://127.0.0.1:1/v1")
    result = slm("distill", "--teacher", teacher, "--prompts", prompts, "-o", str(tmp_path / "o"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_bad_input_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = tmp_path / "p.jsonl"
    out = tmp_path / "out.jsonl"

    def run(teacher: str = "http://127.0.0.1:1/v1", **settings: object) -> None:
        distill(DistillSettings(teacher=teacher, prompts=str(prompts), **settings), out)

    with pytest.raises(DataError, match=r"p.jsonl: prompts file not found"):
        run()
    prompts.write_text('{"prompt": "Say hi."}\n')
    with pytest.raises(TeacherError, match=r"--teacher http://127.0.0.1:1/v1: cannot reach it"):
        run()
    prompts.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: id: 'a' is already used on line 1"):
        run()
    prompts.write_text('{"messages": [{"role": "assistant", "content": "hi"}]}\n')
    with pytest.raises(DataError, match=r"p.jsonl:1: messages: the last message must be the user"):
        run()
    prompts.write_text('{"prompt": "x", "must_include": "Paris"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:1: must_include: expected a list"):
        run()
    prompts.write_text('{"prompt": "x"}\n')
    monkeypatch.delenv("NO_SUCH_TEACHER_KEY", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_TEACHER_KEY is not set"):
        run(api_key_env="NO_SUCH_TEACHER_KEY")
    out.write_text('{"messages": []}\n')  # somebody else's file: never appended to
    with pytest.raises(DataError, match=r"out.jsonl:1: not a line written by slm distill"):
        run()
    with pytest.raises(ConfigError, match="is the prompts file"):
        distill(DistillSettings(teacher="default", prompts=str(prompts)), prompts)


def test_recipe_distill_section(tmp_path: Path) -> None:
    shipped = load_recipe(REPO / "recipes" / "distill.yaml")
    assert shipped.distill.enabled and shipped.distill.system
    assert (REPO / "recipes" / shipped.distill.prompts).is_file()
    assert not load_recipe(REPO / "recipes" / "demo.yaml").distill.enabled
    # the teacher's answers may be the only training data
    only = tmp_path / "only.yaml"
    only.write_text("distill:\n  teacher: default\n  prompts: p.txt\n  max_tokens: 64\n")
    recipe = load_config(only, Recipe)
    assert recipe.data.train == [] and recipe.distill.max_tokens == 64
    half = tmp_path / "half.yaml"
    half.write_text("data:\n  train: [a.jsonl]\ndistill:\n  teacher: default\n")
    with pytest.raises(ConfigError, match=r"half.yaml:3: distill: prompts: required"):
        load_config(half, Recipe)
    typo = tmp_path / "typo.yaml"
    typo.write_text("distill:\n  teacher: default\n  prompts: p.txt\n  concurrncy: 2\n")
    with pytest.raises(ConfigError, match=r"typo.yaml:4: distill.concurrncy: unknown key"):
        load_config(typo, Recipe)
    nothing = tmp_path / "nothing.yaml"
    nothing.write_text("model: default\n")
    with pytest.raises(ConfigError, match="data.train: give at least one data file"):
        load_config(nothing, Recipe)


@pytest.mark.slow
@needs_llama_server
def test_pipeline_distill_stage_is_fingerprinted(teacher: ServerProcess, tmp_path: Path) -> None:
    from slmkit.pipeline import PipelineState, _Context, _distill_stage

    (tmp_path / "p.txt").write_text("Name the capital of France.\nName a fruit.\n")
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(
        f"output_dir: {tmp_path / 'run'}\n"
        f"distill:\n  teacher: {teacher.base_url}/v1\n  prompts: p.txt\n  max_tokens: 12\n"
        "  keep_truncated: true\n  concurrency: 1\n"
    )
    logged: list[str] = []

    def stage(recipe: Recipe) -> Recipe:
        run_dir = tmp_path / "run"
        ctx = _Context(recipe, tmp_path, run_dir, PipelineState(run_dir), set(), logged.append)
        return _distill_stage(ctx)

    trained_on = stage(load_recipe(recipe_path))
    data = tmp_path / "run" / "distill" / "data.jsonl"
    assert trained_on.data.train == [str(data)] and len(ids(data)) == 2
    assert any("distill[/bold]: running" in line for line in logged)
    stage(load_recipe(recipe_path, ["distill.concurrency=2"]))  # speed only: same answers
    assert any("distill[/bold]: cached" in line for line in logged)
    stage(load_recipe(recipe_path, ["distill.max_tokens=4"]))  # new inputs: asked again
    assert any("distill[/bold]: inputs changed" in line for line in logged)
    assert len(ids(data)) == 2  # the old answers were dropped, not kept beside the new ones
    answers = [
        json.loads(line)["messages"][-1]["content"] for line in data.read_text().splitlines()
    ]
    assert all(len(answer) < 40 for answer in answers)  # 4 tokens each


def test_a_line_cut_by_a_kill_is_asked_again(tmp_path: Path) -> None:
    out = tmp_path / "data.jsonl"
    whole = json.dumps({"id": "a", "messages": []}) + "\n"
    out.write_text(whole + '{"id": "b", "messages": [{"role": "us')
    assert done_keys(out) == {"a"}
    assert out.read_text() == whole  # the cut line is gone, so the next line starts clean
