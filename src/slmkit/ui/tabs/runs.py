"""Runs: every run folder under --runs (trained from the CLI, by `slm run` or here), its status,
recipe, diagnosis and loss curve; two selected runs overlay their curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slmkit.train.run_index import RunInfo, list_runs, read_run
from slmkit.ui.charts import loss_frame, loss_plot
from slmkit.ui.context import Board
from slmkit.ui.messages import reports_errors, status_html

COLUMNS = [
    "run",
    "status",
    "method",
    "base model",
    "steps",
    "final loss",
    "data",
    "created",
    "path",
]
REFRESH_S = 5.0


def runs_table(runs: list[RunInfo], root: Path) -> list[list[Any]]:
    rows = []
    for run in runs:
        status = run.status + (" (resumable)" if run.resumable else "")
        loss = f"{run.final_loss:.4f}" if run.final_loss is not None else ""
        rows.append(
            [
                _relative(run.path, root),
                status,
                f"{run.method}/{run.finetuning}",
                run.base_model,
                run.steps if run.steps is not None else "",
                loss,
                run.data_hash,
                run.created,
                run.path,
            ]
        )
    return rows


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root)) or "."
    except ValueError:
        return path


def run_details(run_dir: Path) -> tuple[str, str, str]:
    """(status line, recipe YAML, diagnosis text) of one run."""
    run = read_run(run_dir)
    if run is None:
        return status_html(f"{run_dir}: not a run folder (no manifest.json)", "error"), "", ""
    recipe = (run_dir / "recipe.yaml").read_text() if (run_dir / "recipe.yaml").is_file() else ""
    line = f"{run.name}: {run.status}"
    if run.error:
        line += f" - {run.error}"
    if run.resumable:
        line += f" - resume with `slm train RECIPE --resume` (output_dir: {run.path})"
    return (
        status_html(line, "error" if run.status == "failed" else "info"),
        recipe,
        _diagnosis(run_dir),
    )


def _diagnosis(run_dir: Path) -> str:
    path = run_dir / "diagnosis.json"
    if not path.is_file():
        return "(no diagnosis yet: written when training ends)"
    data = json.loads(path.read_text())
    lines = [f"**{data.get('status', '?')}**: {data.get('summary', '')}"]
    lines += [f"- {advice}" for advice in data.get("advice", [])]
    return "\n".join(lines)


def build(board: Board) -> None:
    import gradio as gr

    with gr.Row():
        refresh = gr.Button("Refresh", scale=0, elem_id="runs-refresh")
        status = gr.HTML(status_html(f"run folders under {board.runs_dir}"), elem_id="runs-status")
    table = gr.Dataframe(
        headers=COLUMNS,
        interactive=False,
        wrap=True,
        elem_id="runs-table",
        label="runs",
    )
    picked = gr.Dropdown(
        label="runs to plot (pick one, or two to overlay)",
        multiselect=True,
        max_choices=2,
        choices=[],
        elem_id="runs-pick",
    )
    plot = loss_plot("loss curves", elem_id="runs-plot")
    with gr.Row():
        recipe = gr.Code(
            label="recipe.yaml",
            language="yaml",
            interactive=False,
            elem_id="runs-recipe",
            max_lines=24,
        )
        diagnosis = gr.Markdown(elem_id="runs-diagnosis")

    def refresh_runs(current: list[str] | None) -> tuple[Any, ...]:
        runs = list_runs(board.runs_dir)
        choices = [(_relative(r.path, board.runs_dir), r.path) for r in runs]
        live = any(r.status == "running" and r.path in (current or []) for r in runs)
        return (
            runs_table(runs, board.runs_dir),
            gr.update(choices=choices),
            loss_frame(current or []) if live else gr.skip(),
        )

    @reports_errors(outputs=4)
    def show(paths: list[str] | None) -> tuple[Any, ...]:
        paths = paths or []
        if not paths:
            return status_html("pick a run to see its curve"), loss_frame([]), "", ""
        line, text, diag = run_details(Path(paths[-1]))
        return line, loss_frame(paths), text, diag

    outputs = [table, picked, plot]
    refresh.click(refresh_runs, inputs=[picked], outputs=outputs)
    picked.change(show, inputs=[picked], outputs=[status, plot, recipe, diagnosis])
    board.on_load(refresh_runs, [picked], outputs)
    timer = gr.Timer(REFRESH_S)
    timer.tick(refresh_runs, inputs=[picked], outputs=outputs, show_progress="hidden")
