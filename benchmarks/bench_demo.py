"""The `make demo` journey as a benchmark: `slm run recipes/demo.yaml` end to end (about 15 minutes
on 2 cores), then its numbers into docs/benchmarks.md: time per stage against the 10-15 minute
target, and fact recall of base vs tuned vs DPO vs each quantized GGUF (the baseline is the
untouched base model, measured in the same run with the same questions).

    python benchmarks/bench_demo.py               # a fresh run in a temporary folder
    python benchmarks/bench_demo.py --from-run runs/demo   # only summarise an existing run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine_line, write_section

REPO = Path(__file__).resolve().parents[1]
TARGET_S = (600.0, 900.0)


def summarise(run_dir: Path, wall_s: float | None) -> str:
    state = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    evaluation = json.loads((run_dir / "eval" / "report.json").read_text())
    total = sum(rec["seconds"] for rec in state.values())
    stage_rows = "\n".join(
        f"| {name} | {rec['seconds']:.0f} | {rec['seconds'] / total:.0%} |"
        for name, rec in state.items()
    )
    models = evaluation["models"]
    base = models[0]["metrics"]["fact_recall"]
    model_rows = "\n".join(
        f"| {m['name']} | {m['engine']} | {m['metrics']['fact_recall']:.3f} "
        f"| [{m['main']['low']:.2f}, {m['main']['high']:.2f}] "
        f"| {m['metrics']['fact_recall'] - base:+.3f} | {m['metrics']['similarity'] or 0:.3f} "
        f"| {m['metrics']['latency_p50_s']:.2f} |"
        for m in models
    )
    verdict = "\n".join(
        f"- {row['status']}: {row['model']} {row['criterion']} (required {row['required']}, "
        f"measured {row['measured']})"
        for row in evaluation.get("verdict", [])
    )
    wall = f"{wall_s:.0f} s wall clock for `slm run`; " if wall_s else ""
    cached = [m["name"] for m in evaluation["models"] if m["cached"] and not m["generated"]]
    if cached:
        wall += (
            f"the answers of {', '.join(cached)} came from the generation cache of an earlier run "
            "(a fresh machine generates them too: about 1-2 minutes more); "
        )
    sft = state["sft"]["outputs"]
    return f"""## The demo pipeline (`make demo` = `slm run recipes/demo.yaml`)

Machine: {machine_line()}. {wall}stages sum to **{total / 60:.1f} min** (target: 12 min).
SFT: {sft["steps"]} steps, final loss {sft["final_loss"]:.3f}, {sft["tokens_per_second"]:.0f} tokens/s.

| stage | seconds | share |
|---|---|---|
{stage_rows}

Fact recall on the {evaluation["n_items"]} held-out demo questions (each asks a store fact in words unlike any
training question; temperature 0, {evaluation["settings"]["max_tokens"]} tokens, 95% bootstrap CI; similarity =
MiniLM cosine to the reference answer; p50 = median seconds per answer):

| model | engine | fact recall | 95% CI | vs base | similarity | p50 s |
|---|---|---|---|---|---|---|
{model_rows}

{verdict}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--from-run", type=Path, help="Summarise this finished run instead.")
    parser.add_argument("--wall", type=float, help="With --from-run: its measured wall seconds.")
    args = parser.parse_args()
    if args.from_run:
        markdown = summarise(args.from_run.resolve(), args.wall)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
            start = time.perf_counter()
            subprocess.run(
                [
                    str(REPO / ".venv" / "bin" / "slm"),
                    "run",
                    str(REPO / "recipes" / "demo.yaml"),
                    "--set",
                    f"output_dir={tmp}/demo",
                ],
                check=True,
            )
            markdown = summarise(Path(tmp) / "demo", time.perf_counter() - start)
    print(markdown)
    write_section("demo", markdown)


if __name__ == "__main__":
    main()
