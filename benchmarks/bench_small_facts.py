"""Small fact sets with `slm train`'s defaults: does a team with a couple of dozen facts get them?

The set (benchmarks/data/facts24_*.jsonl) is 24 invented facts of an IT help desk, 6 wordings each
for training (144 rows) and 2 held-out rewordings each for evaluation (48 questions), written for
this benchmark and unlike the demo's store. Each variant is one `slm train` of the embedded model
with nothing set but the data; the baseline is the untouched model, and the "fixed" row is what
the defaults were before `train.lr`/`train.epochs` became `auto` (lr 2e-4, 3 epochs, batch 8).

    .venv/bin/python benchmarks/bench_small_facts.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import server_env
from report import finish, machine_line

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "benchmarks" / "data" / "facts24_train.jsonl"
EVAL = REPO / "benchmarks" / "data" / "facts24_eval.jsonl"
HOME: dict[str, str] = {}  # the private SLM_HOME of this run (set in main)
AUTO = "auto (the default)"
VARIANTS = {
    "fixed (lr 2e-4, 3 epochs, batch 8)": {"lr": 2e-4, "epochs": 3, "batch_size": 8},
    # checkpoints every 40 steps (kept) only to score recall along the way; training is the same
    AUTO: {"save_steps": 40, "save_total_limit": 10},
}


def slm(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "slmkit.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **HOME, "COLUMNS": "400"},  # unwrapped log lines, to quote them
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"slm {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def train(folder: Path, name: str, train_keys: dict[str, float]) -> dict[str, object]:
    recipe = {
        "model": "default",
        "output_dir": str(folder / name),
        "data": {"train": [str(TRAIN)]},
        **({"train": train_keys} if train_keys else {}),
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    started = time.perf_counter()
    log = slm("train", str(path))
    seconds = time.perf_counter() - started
    run = json.loads((folder / name / "diagnosis.json").read_text())["run"]
    chosen = yaml.safe_load((folder / name / "recipe.yaml").read_text())["train"]
    why = next((line for line in log.splitlines() if "schedule (auto):" in line), "")
    return {
        "seconds": round(seconds, 1),
        "steps": run["steps"],
        "final_loss": run["final_loss"],
        "lr": chosen["lr"],
        "epochs": chosen["epochs"],
        "batch": chosen["batch_size"],
        "why": why.split("schedule (auto): ", 1)[-1],
        "log": log,  # kept in reports/bench_small-facts.json, not in the doc
    }


def main() -> None:
    results: dict[str, object] = {"machine": machine_line(), "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # runs and versions go to a private registry; base answers are generated, not cached
        HOME.update(server_env(folder / "home"))
        names = {}
        for index, (label, keys) in enumerate(VARIANTS.items()):
            name = f"v{index}"
            names[label] = name
            results["variants"][label] = train(folder, name, keys)  # type: ignore[index]
            print(f"{label}: {results['variants'][label]}", flush=True)  # type: ignore[index]
        steps = checkpoint_runs(folder / names[AUTO], folder)
        models = ",".join(
            [
                "base=default",
                *(f"{name}={folder / name}" for name in names.values()),
                *(f"step{step}={path}" for step, path in steps.items()),
            ]
        )
        eval_args = ["-d", str(EVAL), "--max-tokens", "48", "--concurrency", "8"]
        slm("eval", "-m", models, *eval_args, "-o", str(folder / "eval"))
        report = json.loads((folder / "eval" / "report.json").read_text())
        losses = {
            row["step"]: row["loss"]
            for row in map(json.loads, (folder / names[AUTO] / "metrics.jsonl").open())
            if "loss" in row
        }
    scores = {
        m["name"]: {
            "fact_recall": m["metrics"]["fact_recall"],
            "low": m["main"]["low"],
            "high": m["main"]["high"],
        }
        for m in report["models"]
    }
    results["base"] = scores["base"]
    for label, name in names.items():
        results["variants"][label].update(scores[name])  # type: ignore[index]
    results["by_step"] = [
        {"step": step, "loss": losses.get(step), **scores[f"step{step}"]} for step in steps
    ]
    finish("small-facts", results, render)


def checkpoint_runs(run: Path, folder: Path) -> dict[int, Path]:
    """Each kept checkpoint of `run` as a run folder `slm eval` takes (its manifest, the
    checkpoint's adapter), by step."""
    out = {}
    for checkpoint in (run / "checkpoints").glob("checkpoint-*"):
        step = int(checkpoint.name.split("-")[1])
        target = folder / f"step{step}"
        target.mkdir()
        shutil.copy(run / "manifest.json", target / "manifest.json")
        (target / "adapter").symlink_to(checkpoint)
        out[step] = target
    return dict(sorted(out.items()))


def render(results: dict[str, object]) -> str:
    base = results["base"]
    variants: dict[str, dict[str, object]] = results["variants"]  # type: ignore[assignment]
    rows = [
        f"| untouched model | | | | | {base['fact_recall']:.3f} | "  # type: ignore[index]
        f"[{base['low']:.2f}, {base['high']:.2f}] |"  # type: ignore[index]
    ]
    for label, v in variants.items():
        rows.append(
            f"| {label} | {v['lr']:g} | {v['epochs']:g} x batch {v['batch']} | {v['steps']} | "
            f"{v['seconds']:.0f} s | {v['fact_recall']:.3f} | [{v['low']:.2f}, {v['high']:.2f}] |"
        )
    auto = variants[AUTO]
    by_step = [
        f"| {row['step']} | {row['loss']:.3f} | {row['fact_recall']:.3f} | "
        f"[{row['low']:.2f}, {row['high']:.2f}] |"
        for row in results["by_step"]  # type: ignore[attr-defined]
    ]
    return "\n".join(
        [
            "## Small fact sets with the defaults (`benchmarks/bench_small_facts.py`)",
            "",
            f"Machine: {results['machine']}. 24 invented IT help-desk facts, 6 training wordings each "
            "(144 rows), scored on 2 held-out rewordings each (48 questions) by `slm eval` (fact recall: "
            "the answer holds the fact's value; temperature 0, 48 tokens, 95% bootstrap CI). Each row is "
            "one `slm train` of the embedded SmolLM2-135M with only the data set (LoRA r=16 all-linear).",
            "",
            "| setup | lr | passes | steps | train time | fact recall | 95% CI |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"What `slm train` printed for the auto row: `schedule (auto): {auto['why']}`.",
            "",
            "The auto run's fact recall along the way (its checkpoints, same questions; loss = the",
            "training loss logged at that step):",
            "",
            "| step | train loss | fact recall | 95% CI |",
            "|---|---|---|---|",
            *by_step,
        ]
    )


if __name__ == "__main__":
    main()
