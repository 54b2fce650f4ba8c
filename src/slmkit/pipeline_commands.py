"""`slm run RECIPE`: the whole journey from one recipe (thin: parse, call run_pipeline, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slmkit.console import out, result_line


def run_cmd(
    recipe: Annotated[Path, typer.Argument(help="Pipeline recipe YAML (e.g. recipes/demo.yaml).")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a recipe key: --set train.lr=2e-4.")
    ] = None,
    force: Annotated[
        list[str] | None,
        typer.Option(
            "--force",
            help="Rerun this stage and all after it "
            "(distill, validate, sft, dpo, export, evaluate, report).",
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="A few-minute version (short training, few eval "
            "prompts, one quant level) into OUTPUT_DIR-quick.",
        ),
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when an evaluation criterion fails.")
    ] = False,
) -> None:
    """Distill (with a teacher) -> validate data -> train (SFT, then DPO with preference data) -> export + quant eval -> evaluate -> report."""
    from slmkit.evaluate.verdict import VerdictRow, verdict_line
    from slmkit.pipeline import load_pipeline_recipe, run_pipeline
    from slmkit.pipeline_report import next_commands

    loaded = load_pipeline_recipe(recipe, list(set_ or []), quick)
    result = run_pipeline(loaded, recipe.parent, force=set(force or []))
    table = Table("stage", "time", "status")
    for name, rec in result.stages.items():
        table.add_row(name, f"{rec.seconds:.0f}s", "cached" if name in result.skipped else "ran")
    out.print(table)
    evaluation = result.stages.get("evaluate")
    if evaluation is not None:
        metric = evaluation.outputs.get("main_metric", "fact_recall")
        scores = Table("model", metric)
        for model, vals in evaluation.outputs.get("main", {}).items():
            scores.add_row(model, f"{(vals.get('mean') or 0):.3f}")
        out.print(scores)
        for row in evaluation.outputs.get("verdict", []):
            out.print(verdict_line(VerdictRow(**row)), soft_wrap=True, markup=False)
        out.print(f"overall: {'PASS' if result.passed else 'FAIL'}")
    # paths and commands are printed unwrapped and without markup: they must survive copy-paste
    result_line(f"report: {result.report_html}")
    for command in next_commands(result.run_dir, result.final_model, result.stages):
        out.print(f"  {command}", soft_wrap=True, markup=False)
    if (strict or loaded.evaluate.strict) and not result.passed:
        raise SystemExit(1)


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
