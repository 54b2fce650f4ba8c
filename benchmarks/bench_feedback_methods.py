"""Learning from feedback: what KTO, DPO, ORPO and SimPO add to an SFT model, and what each costs.

The 24 invented help-desk facts of bench_small_facts (benchmarks/data/facts24_*.jsonl). An SFT run
stopped early (100 steps) answers the 144 training questions; the eval's own verdict on each answer
(does it hold the fact?) is the user's thumb. From those thumbs:

- KTO trains on every rated answer as it is (up or down, unpaired);
- DPO, ORPO and SimPO need a pair, so they get one only where a person would have corrected a
  wrong answer (the training answer chosen, the model's answer rejected).

Each continues the SFT run (`dpo.from_run`) with nothing else set (the `auto` schedule), and every
model is scored on the 48 held-out rewordings, as in bench_small_facts.

    .venv/bin/python benchmarks/bench_feedback_methods.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_small_facts as facts
from bench_serve import server_env
from report import finish, machine_line

SFT_STEPS = 100  # stopped early, so that some answers are wrong and there is something to rate
NAMES = {"kto": "KTO", "dpo": "DPO", "orpo": "ORPO", "simpo": "SimPO"}
METHODS = {
    "kto": "every rated answer (thumbs up and down)",
    "dpo": "pairs: the corrected wrong answers",
    "orpo": "pairs: the corrected wrong answers",
    "simpo": "pairs: the corrected wrong answers",
}


def train(folder: Path, name: str, recipe: dict[str, Any]) -> dict[str, Any]:
    path = folder / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump({"model": "default", "output_dir": str(folder / name), **recipe})
    )
    started = time.perf_counter()
    log = facts.slm("train", str(path))
    seconds = time.perf_counter() - started
    run = json.loads((folder / name / "diagnosis.json").read_text())["run"]
    why = next((line for line in log.splitlines() if "schedule (auto):" in line), "")
    return {
        "seconds": round(seconds, 1),
        "steps": run["steps"],
        "why": why.split("schedule (auto): ", 1)[-1],
    }


def rate_training_answers(folder: Path, sft: Path) -> tuple[list[dict], list[dict], float]:
    """The SFT model's answers to the training questions, rated by the eval's verdict: KTO rows,
    the pairs a person's corrections would give, and the share rated up."""
    keys = {key for row in map(json.loads, facts.EVAL.open()) for key in row["must_include"]}
    questions = []
    for row in map(json.loads, facts.TRAIN.open()):
        answer = row["messages"][-1]["content"]
        (key,) = [key for key in keys if key in answer]
        questions.append({"messages": row["messages"][:-1], "reference": answer, "must_include": [key]})  # fmt: skip
    data = folder / "train_questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in questions))
    facts.slm("eval", "-m", f"sft={sft}", "-d", str(data), "--max-tokens", "48", "--concurrency", "8", "-o", str(folder / "rate"))  # fmt: skip
    report = json.loads((folder / "rate" / "report.json").read_text())
    rated, pairs = [], []
    for item in report["items"]:
        answer = item["answers"]["sft"]
        good = answer["scores"]["fact_recall"] == 1.0
        reply = {"role": "assistant", "content": answer["text"]}
        rated.append({"messages": [*item["messages"], reply], "label": good})
        if not good:
            pairs.append({"prompt": item["messages"], "chosen": item["reference"], "rejected": answer["text"]})  # fmt: skip
    return rated, pairs, sum(r["label"] for r in rated) / len(rated)


def main() -> None:
    results: dict[str, Any] = {"machine": machine_line(), "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        facts.HOME.update(server_env(folder / "home"))
        sft = folder / "sft"
        results["sft"] = train(folder, "sft", {"data": {"train": [str(facts.TRAIN)]}, "train": {"max_steps": SFT_STEPS}})  # fmt: skip
        rated, pairs, up_share = rate_training_answers(folder, sft)
        results.update(rated=len(rated), pairs=len(pairs), up_share=up_share)
        files = {"kto": folder / "rated.jsonl", "pairs": folder / "pairs.jsonl"}
        files["kto"].write_text("".join(json.dumps(r) + "\n" for r in rated))
        files["pairs"].write_text("".join(json.dumps(p) + "\n" for p in pairs))
        for method in METHODS:
            data = files["kto" if method == "kto" else "pairs"]
            recipe = {
                "method": method,
                "data": {"train": [str(data)]},
                "dpo": {"from_run": str(sft)},
            }
            results["methods"][method] = train(folder, method, recipe)
            print(f"{method}: {results['methods'][method]}", flush=True)
        models = ",".join([f"sft={sft}", *(f"{m}={folder / m}" for m in METHODS)])
        facts.slm("eval", "-m", models, "-d", str(facts.EVAL), "--max-tokens", "48", "--concurrency", "8", "-o", str(folder / "eval"))  # fmt: skip
        report = json.loads((folder / "eval" / "report.json").read_text())
    for model in report["models"]:
        score = {
            "fact_recall": model["metrics"]["fact_recall"],
            "low": model["main"]["low"],
            "high": model["main"]["high"],
        }
        (results["sft"] if model["name"] == "sft" else results["methods"][model["name"]]).update(score)  # fmt: skip
    finish("feedback-methods", results, render)


def render(results: dict[str, Any]) -> str:
    sft = results["sft"]
    rows = [
        f"| SFT, {sft['steps']} steps (the model rated) | the 144 training rows | {sft['steps']} | "
        f"{sft['seconds']:.0f} s | {sft['fact_recall']:.3f} | [{sft['low']:.2f}, {sft['high']:.2f}] | |"
    ]
    for method, what in METHODS.items():
        m = results["methods"][method]
        rows.append(
            f"| + {NAMES[method]} | {what} | {m['steps']} | {m['seconds']:.0f} s | "
            f"{m['fact_recall']:.3f} | [{m['low']:.2f}, {m['high']:.2f}] | "
            f"{m['fact_recall'] - sft['fact_recall']:+.3f} |"
        )
    return "\n".join(
        [
            "## Learning from feedback: KTO, DPO, ORPO, SimPO (`benchmarks/bench_feedback_methods.py`)",
            "",
            f'Machine: {results["machine"]}. The 24 invented facts of "Small fact sets with the defaults": an SFT run '
            f"of the embedded model stopped at {sft['steps']} steps answered the 144 training "
            f"questions; the eval's verdict on each answer was its thumb ({results['up_share']:.0%} "
            f"up). KTO trained on all {results['rated']} rated answers; DPO, ORPO and SimPO on the "
            f"{results['pairs']} pairs a person's corrections of the wrong answers would give. Each "
            "continued the SFT adapter with the `auto` schedule; fact recall on the 48 held-out "
            "rewordings (temperature 0, 48 tokens, 95% bootstrap CI).",
            "",
            "| model | trained on | steps | train time | held-out fact recall | 95% CI | vs SFT |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


if __name__ == "__main__":
    main()
