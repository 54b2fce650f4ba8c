"""GRPO with the answer checks as rewards: does the embedded model learn to answer in valid JSON?

recipes/grpo-json.yaml trains on 42 support messages to turn into a JSON ticket (the schema is the
prompt's response_format; rewards: the gateway's json_schema check and the right intent). Before
and after, `slm eval` scores the 22 held-out messages: json_valid (the answer is JSON meeting the
schema) and fact recall (it names the right intent). The baseline is the untouched model in the
same run, with the same questions.

    .venv/bin/python benchmarks/bench_grpo_json.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_small_facts as facts
from bench_serve import server_env
from report import finish, machine_line

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "grpo-json.yaml"
EVAL = REPO / "examples" / "data" / "tickets_eval.jsonl"


def main() -> None:
    results: dict[str, object] = {"machine": machine_line()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        facts.HOME.update(server_env(folder / "home"))
        recipe = yaml.safe_load(RECIPE.read_text())
        recipe["output_dir"] = str(folder / "grpo")
        recipe["data"]["train"] = [
            str((RECIPE.parent / p).resolve()) for p in recipe["data"]["train"]
        ]
        path = folder / "grpo.yaml"
        path.write_text(yaml.safe_dump(recipe))
        started = time.perf_counter()
        log = facts.slm("train", str(path))
        results["train_seconds"] = round(time.perf_counter() - started, 1)
        run = json.loads((folder / "grpo" / "diagnosis.json").read_text())["run"]
        results["steps"] = run["steps"]
        results["why"] = next(
            (
                line.split("schedule (auto): ", 1)[1]
                for line in log.splitlines()
                if "schedule (auto):" in line
            ),
            "",
        )
        rows = [json.loads(line) for line in (folder / "grpo" / "metrics.jsonl").open()]
        rewards = [row["reward"] for row in rows if "reward" in row]
        tenth = max(1, len(rewards) // 10)
        results["reward_first"] = sum(rewards[:tenth]) / tenth
        results["reward_last"] = sum(rewards[-tenth:]) / tenth
        facts.slm("eval", "-m", f"base=default,grpo={folder / 'grpo'}", "-d", str(EVAL), "--max-tokens", "64", "-o", str(folder / "eval"))  # fmt: skip
        report = json.loads((folder / "eval" / "report.json").read_text())
    results["models"] = {
        m["name"]: {k: m["metrics"][k] for k in ("json_valid", "fact_recall")}
        for m in report["models"]
    }
    finish("grpo-json", results, render)


def render(results: dict) -> str:
    base, grpo = results["models"]["base"], results["models"]["grpo"]
    return "\n".join(
        [
            "## GRPO with the answer checks as rewards (`benchmarks/bench_grpo_json.py`)",
            "",
            f"Machine: {results['machine']}. `recipes/grpo-json.yaml`: the embedded model, 42 support "
            "messages to turn into a JSON ticket, 4 sampled answers per message, rewards = the "
            "gateway's json_schema check + the right intent, nothing written by hand. "
            f"{results['steps']} steps in {results['train_seconds']:.0f} s ({results['why']}); mean "
            f"reward per answer {results['reward_first']:.2f} over the first tenth of the steps, "
            f"{results['reward_last']:.2f} over the last. Scored by `slm eval` on the 22 held-out "
            "messages (temperature 0, 64 tokens):",
            "",
            "| model | valid JSON (json_valid) | right intent (fact recall) |",
            "|---|---|---|",
            f"| untouched | {base['json_valid']:.3f} | {base['fact_recall']:.3f} |",
            f"| after GRPO | {grpo['json_valid']:.3f} | {grpo['fact_recall']:.3f} |",
        ]
    )


if __name__ == "__main__":
    main()
