"""`slm run`: the whole journey from one recipe, stage skipping by fingerprint, `--force`, the
final report, and bad recipes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, run_slm

DATA = REPO / "examples" / "data"


def tiny_pipeline_recipe(model_dir: Path, out: Path, **extra: Any) -> dict[str, Any]:
    """The demo journey on the 2-layer random model: seconds per stage."""
    recipe: dict[str, Any] = {
        "model": str(model_dir),
        "output_dir": str(out),
        "data": {"train": [str(DATA / "support_sft.jsonl")], "max_samples": 16, "cutoff_len": 128},
        "train": {"lr": 5e-3, "max_steps": 3, "batch_size": 4, "save_steps": 3, "report_to": []},
        "preference": {"data": [str(DATA / "support_dpo.jsonl")], "max_steps": 2},
        "evaluate": {
            "data": str(DATA / "support_eval.jsonl"),
            "limit": 3,
            "max_tokens": 4,
            "bootstrap_samples": 100,
            "similarity": False,
            "criteria": {"min_gain": {"fact_recall": 0.3}},
        },
        "export": {"enabled": False},
    }
    recipe.update(extra)
    return recipe


def write(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def stage_status(stdout: str) -> dict[str, str]:
    """{stage: ran|cached} from the stage table `slm run` prints."""
    out = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.replace("│", "|").split("|") if c.strip()]
        if len(cells) == 3 and cells[2] in ("ran", "cached"):
            out[cells[0]] = cells[2]
    return out


def test_tiny_pipeline_runs_every_stage_then_skips_what_is_done(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "tiny-run"
    recipe = write(tmp_path / "r.yaml", tiny_pipeline_recipe(tiny_model_dir, run_dir))

    first = run_slm("run", str(recipe), timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert stage_status(first.stdout) == {
        "validate": "ran",
        "sft": "ran",
        "dpo": "ran",
        "evaluate": "ran",
        "report": "ran",
    }
    state = json.loads((run_dir / "pipeline.json").read_text())
    assert state["stages"]["sft"]["outputs"]["steps"] == 3
    assert state["stages"]["dpo"]["outputs"]["steps"] == 2
    assert (run_dir / "dpo" / "adapter").is_dir()
    evaluation = json.loads((run_dir / "eval" / "report.json").read_text())
    assert [m["name"] for m in evaluation["models"]] == ["base", "tuned", "dpo"]
    # random weights learn no facts in 3 steps: the recipe's criterion is reported as FAIL...
    assert "FAIL" in first.stdout and "fact_recall" in first.stdout
    # ...which fails the command only with --strict (checked below, without rerunning anything)
    report = (run_dir / "report.html").read_text()
    assert "evaluation report" in report and "slm serve" in report and "data:image/png" in report
    summary = json.loads((run_dir / "report.json").read_text())
    assert summary["final_model"] == str(run_dir / "dpo")
    assert any(cmd.startswith("slm chat") for cmd in summary["next"])

    second = run_slm("run", str(recipe), "--strict", timeout=600)
    assert second.returncode == 1, second.stderr[-2000:]  # FAIL + --strict
    assert stage_status(second.stdout) == {
        "validate": "cached",
        "sft": "cached",
        "dpo": "cached",
        "evaluate": "cached",
        "report": "ran",
    }

    # an eval setting changes only the evaluation: training stays cached
    third = run_slm("run", str(recipe), "--set", "evaluate.max_tokens=5", timeout=600)
    assert third.returncode == 0, third.stderr[-2000:]
    status = stage_status(third.stdout)
    assert status["sft"] == "cached" and status["dpo"] == "cached"
    assert status["evaluate"] == "ran"

    # --force dpo reruns DPO and everything after it, not SFT
    fourth = run_slm("run", str(recipe), "--set", "evaluate.max_tokens=5", "--force", "dpo")
    assert fourth.returncode == 0, fourth.stderr[-2000:]
    status = stage_status(fourth.stdout)
    assert status["sft"] == "cached" and status["dpo"] == "ran" and status["evaluate"] == "ran"

    # a DPO setting reruns DPO and what follows; SFT never reads it and stays cached
    fifth = run_slm("run", str(recipe), "--set", "evaluate.max_tokens=5", "--set", "dpo.beta=0.2")
    assert fifth.returncode == 0, fifth.stderr[-2000:]
    status = stage_status(fifth.stdout)
    assert status["sft"] == "cached" and status["dpo"] == "ran" and status["evaluate"] == "ran"


@pytest.mark.slow
def test_killed_run_continues_sft_from_its_last_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "killed-run"
    recipe = tiny_pipeline_recipe(tiny_model_dir, run_dir)
    del recipe["preference"], recipe["evaluate"]
    recipe["train"].update(max_steps=40, save_steps=5)
    path = write(tmp_path / "r.yaml", recipe)
    cmd = [sys.executable, "-m", "slmkit.cli", "run", str(path)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list((run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, "slm run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint in 300 s"
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()

    again = run_slm("run", str(path), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing an interrupted run" in again.stdout + again.stderr
    sft = json.loads((run_dir / "pipeline.json").read_text())["stages"]["sft"]["outputs"]
    assert sft["steps"] == 40
    assert sft["resumed_from"] and Path(sft["resumed_from"]).name.startswith("checkpoint-")


def test_changed_training_data_reruns_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    rows = (DATA / "support_sft.jsonl").read_text().splitlines()[:12]
    data.write_text("\n".join(rows) + "\n")
    recipe_body = tiny_pipeline_recipe(tiny_model_dir, tmp_path / "run", preference={})
    recipe_body["data"]["train"] = [str(data)]
    recipe_body["evaluate"] = {}
    recipe = write(tmp_path / "r.yaml", recipe_body)
    first = run_slm("run", str(recipe))
    assert first.returncode == 0, first.stderr[-2000:]
    assert stage_status(first.stdout) == {"validate": "ran", "sft": "ran", "report": "ran"}
    data.write_text("\n".join(rows[:10]) + "\n")
    second = run_slm("run", str(recipe))
    # like make: new data means the training stages run again, from scratch
    assert second.returncode == 0, second.stderr[-2000:]
    assert stage_status(second.stdout) == {"validate": "ran", "sft": "ran", "report": "ran"}
    assert "inputs changed since the last run" in second.stderr
    assert "resuming" not in second.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    from slmkit.train.runfolder import file_sha256

    assert manifest["data_files"] == {str(data): file_sha256(data)}  # trained on the new file


def test_new_eval_set_reruns_the_checks_not_the_training(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    eval_file = tmp_path / "eval.jsonl"
    rows = (DATA / "support_eval.jsonl").read_text().splitlines()
    eval_file.write_text("\n".join(rows[:3]) + "\n")
    body = tiny_pipeline_recipe(tiny_model_dir, tmp_path / "run", preference={})
    body["evaluate"]["data"] = str(eval_file)
    recipe = write(tmp_path / "r.yaml", body)
    first = run_slm("run", str(recipe))
    assert first.returncode == 0, first.stderr[-2000:]
    eval_file.write_text("\n".join(rows[3:6]) + "\n")
    second = run_slm("run", str(recipe))
    assert second.returncode == 0, second.stderr[-2000:]
    assert stage_status(second.stdout) == {
        "validate": "ran",  # the leakage check sees the new questions
        "sft": "cached",
        "evaluate": "ran",
        "report": "ran",
    }


def test_export_fingerprint_ignores_thread_count_but_not_quant_levels() -> None:
    # threads defaults to a count read from the load average: a busy machine must not redo a
    # finished export (and every stage after it) because of it
    from slmkit.export.config import ExportSection
    from slmkit.pipeline import export_fingerprint

    idle = ExportSection(quants=["q8_0"], threads=2)
    busy = ExportSection(quants=["q8_0"], threads=1)
    assert export_fingerprint(idle) == export_fingerprint(busy)
    assert export_fingerprint(idle) != export_fingerprint(
        ExportSection(quants=["q4_k_m"], threads=2)
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--force", "bogus"], "--force bogus: unknown stage"),
        (["--set", "evaluate.max_tokens=0"], "evaluate.max_tokens"),
        (["--set", "export.quants=[q9_9]"], "unknown quantization 'q9_9'"),
        (["--set", "preference.lr=-1"], "preference.lr"),
    ],
)
def test_bad_pipeline_arguments_exit_2_with_one_line(
    tiny_model_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    recipe = write(tmp_path / "r.yaml", tiny_pipeline_recipe(tiny_model_dir, tmp_path / "run"))
    proc = run_slm("run", str(recipe), *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing was started


def test_unknown_recipe_key_names_the_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    body = yaml.safe_dump(tiny_pipeline_recipe(tiny_model_dir, tmp_path / "run"), sort_keys=False)
    body = body.replace("  limit: 3\n", "  limit: 3\n  max_tokenz: 9\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(body)
    line = body.splitlines().index("  max_tokenz: 9") + 1
    proc = run_slm("run", str(recipe))
    assert proc.returncode == 2
    assert f"{recipe}:{line}" in proc.stderr and "evaluate.max_tokenz" in proc.stderr


def test_missing_eval_file_stops_before_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    recipe_body = tiny_pipeline_recipe(tiny_model_dir, tmp_path / "run")
    recipe_body["evaluate"]["data"] = str(tmp_path / "nope.jsonl")
    proc = run_slm("run", str(write(tmp_path / "r.yaml", recipe_body)))
    assert proc.returncode == 2, proc.stderr
    assert "nope.jsonl" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "adapter").exists()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a hang guard, not a speed check
def test_quick_demo_pipeline_runs_the_demo_recipe(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`slm run recipes/demo.yaml --quick`: the make-demo journey (its data, stages, export and
    criteria), shortened, with a real export; on the 2-layer model, since the README's tour already
    takes the embedded model through training, export, evaluation and serving."""
    proc = run_slm(
        "run",
        str(REPO / "recipes" / "demo.yaml"),
        "--quick",
        "--set",
        f"model={tiny_model_dir}",
        "--set",
        f"output_dir={tmp_path / 'demo'}",
        "--set",
        "train.max_steps=8",  # a third of --quick: the journey, not the learning, is under test
        "--set",
        "train.eval_steps=4",
        "--set",
        "train.save_steps=4",
        "--set",
        "preference.max_steps=2",
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = tmp_path / "demo"  # an explicit output_dir is used as given (no -quick suffix)
    assert stage_status(proc.stdout) == {
        s: "ran" for s in ("validate", "sft", "dpo", "export", "evaluate", "report")
    }
    state = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    assert state["sft"]["outputs"]["steps"] == 8 and state["dpo"]["outputs"]["steps"] == 2
    export = json.loads((run_dir / "export" / "export.json").read_text())
    assert (run_dir / "export" / "dpo-q8_0.gguf").is_file() and export["parity"]["passed"]
    evaluation = json.loads((run_dir / "eval" / "report.json").read_text())
    assert evaluation["n_items"] == 6 and evaluation["settings"]["max_tokens"] == 32
    recall = {m["name"]: m["metrics"]["fact_recall"] for m in evaluation["models"]}
    assert set(recall) == {"base", "tuned", "dpo", "q8_0"}
    assert recall["base"] == 0.0, recall  # random weights know no facts
    # 8 steps are too few to learn 22 facts (the full demo and the tour measure learning);
    # here the recipe's criteria must still be judged for every model
    criteria = {(row["model"], row["criterion"].split()[0]) for row in evaluation["verdict"]}
    assert criteria == {
        ("tuned", "fact_recall"),
        ("dpo", "fact_recall"),
        ("q8_0", "fact_recall"),
        ("q8_0", "quantization"),
    }
    summary = json.loads((run_dir / "report.json").read_text())
    assert summary["stages"]["export"]["recommended"] in {"dpo-q8_0.gguf", "dpo-f16.gguf"}
    text = proc.stdout
    assert "report:" in text and "slm serve --model support=" in text and "slm chat" in text
