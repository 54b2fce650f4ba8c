"""Export: pick a run or model and quantization levels, run `slm export` in the background, then
show the quant-eval table with its recommendation, the Modelfile and serve.sh, and the files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmkit.export.config import KNOWN_QUANTS, ExportConfig
from slmkit.export.report_file import read_export_folder
from slmkit.ui.context import Board
from slmkit.ui.export_view import (
    answers_frame,
    export_argv,
    export_folders,
    file_links,
    new_export_dir,
    quant_frame,
    recommendation_markdown,
    source_choices,
)
from slmkit.ui.job_panel import job_panel
from slmkit.ui.messages import reports_errors

INTRO = (
    "Merge → GGUF → quantize → measure each level against the f16 GGUF (KL divergence, top-1 "
    "agreement, perplexity ratio, answers) → recommend the smallest level within thresholds. "
    "Runs `slm export` in the background; a reloaded page finds it again."
)


def build(board: Board) -> None:
    import gradio as gr

    defaults = ExportConfig()
    exports_dir = board.folder("exports")
    gr.Markdown(INTRO)
    source, quants = _what_to_export(board, defaults)
    settings = _eval_settings(defaults)
    panel = job_panel(
        board,
        "export",
        "export",
        "Export",
        "pick a model and levels, then Export",
        "export folder",
        lambda: export_folders(exports_dir, board.runs_dir),
    )
    view = _export_view()

    @reports_errors(outputs=4)
    def start_export(
        src: str | None,
        levels: list[str] | None,
        prompt_file: str | None,
        most: float | None,
        skip: bool,
        go_on: bool,
    ) -> tuple[Any, ...]:
        out_dir = new_export_dir(exports_dir, src or "")
        argv = export_argv(
            src or "",
            levels or [],
            out_dir,
            prompts=prompt_file or "",
            max_prompts=most,
            skip_eval=skip,
            force=go_on,
        )
        return panel.started(board.jobs.start("export", argv, out_dir), argv)

    panel.start.click(start_export, inputs=[source, quants, *settings], outputs=panel.start_outputs)
    panel.past.change(show_export, inputs=[panel.past], outputs=[panel.status, *view])
    board.on_load(lambda: gr.update(choices=source_choices(board.runs_dir)), [], [source])


def _what_to_export(board: Board, defaults: ExportConfig) -> tuple[Any, Any]:
    """The model (a run folder, `default`, a typed HF folder) and the quantization levels."""
    import gradio as gr

    with gr.Row():
        source = gr.Dropdown(
            choices=source_choices(board.runs_dir),
            value="default",
            allow_custom_value=True,
            label="model to export",
            info="a run folder, `default`, or type the path of an HF model folder",
            elem_id="export-source",
            scale=2,
        )
        quants = gr.CheckboxGroup(
            choices=list(KNOWN_QUANTS),
            value=defaults.quants,
            label="quantization levels",
            info="q8_0 … q4_k_m are the usual choices; lower levels break small models quickly",
            elem_id="export-quants",
            scale=3,
        )
    return source, quants


def _eval_settings(defaults: ExportConfig) -> list[Any]:
    """The quant eval's prompts, their most, skip eval, --force (in that order)."""
    import gradio as gr

    with gr.Accordion("quant eval settings", open=False), gr.Row():
        prompts = gr.Textbox(
            label="eval prompts (JSONL)",
            placeholder="default: the run's eval set, else built-in prompts",
            elem_id="export-prompts",
            scale=3,
        )
        max_prompts = gr.Number(
            value=defaults.max_prompts,
            precision=0,
            label="most prompts",
            elem_id="export-max-prompts",
        )
        skip_eval = gr.Checkbox(value=defaults.skip_eval, label="skip quant eval")
        force = gr.Checkbox(value=defaults.force, label="go on past parity drift (--force)")
    return [prompts, max_prompts, skip_eval, force]


def _export_view() -> list[Any]:
    """A finished export: recommendation, quant table, Modelfile, serve.sh, files, answers."""
    import gradio as gr

    recommendation = gr.Markdown(elem_id="export-recommendation")
    table = gr.Dataframe(
        label="quantization vs the reference GGUF",
        interactive=False,
        wrap=True,
        elem_id="export-quant-table",
    )
    with gr.Row():
        modelfile = gr.Code(
            label="Modelfile (Ollama)", interactive=False, lines=8, elem_id="export-modelfile"
        )
        serve = gr.Code(
            label="serve.sh (llama-server)",
            language="shell",
            interactive=False,
            lines=4,
            elem_id="export-serve",
        )
    files = gr.HTML(elem_id="export-files")
    with gr.Accordion("answers at temperature 0 (reference GGUF vs each level)", open=False):
        answers = gr.Dataframe(interactive=False, wrap=True, elem_id="export-answers")
    return [recommendation, table, modelfile, serve, files, answers]


@reports_errors(outputs=7)
def show_export(folder: str | None) -> tuple[Any, ...]:
    """A past export in the view (status, the six parts)."""
    import gradio as gr

    if not folder:
        return (gr.skip(),) * 7
    export = read_export_folder(Path(folder))
    return (
        gr.skip(),  # the status box keeps the job's last word
        recommendation_markdown(export),
        quant_frame(export),
        export.text("Modelfile"),
        export.text("serve.sh"),
        file_links(export.files(), "download"),
        answers_frame(export),
    )
