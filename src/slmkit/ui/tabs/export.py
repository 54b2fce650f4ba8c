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
    find_job,
    job_status,
    new_export_dir,
    quant_frame,
    recommendation_markdown,
    source_choices,
)
from slmkit.ui.messages import reports_errors, status_html

POLL_S = 2.0
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
    with gr.Row():
        start = gr.Button("Export", variant="primary", scale=0, elem_id="export-start")
        stop = gr.Button("Stop", scale=0, elem_id="export-stop")
        status = gr.HTML(
            status_html("pick a model and levels, then Export"), elem_id="export-status"
        )
    with gr.Accordion("log", open=False):
        log = gr.Textbox(lines=10, max_lines=20, show_label=False, elem_id="export-log")
    past = gr.Dropdown(
        label="export folder",
        choices=export_folders(exports_dir, board.runs_dir),
        value=None,  # set on page load, so that its change renders the newest
        elem_id="export-past",
    )
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
    watching = gr.State("")
    timer = gr.Timer(POLL_S, active=False)

    @reports_errors(outputs=7)
    def show(folder: str | None) -> tuple[Any, ...]:
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
        job = board.jobs.start("export", argv, out_dir)
        line = status_html(f"export started: slm {' '.join(argv)}")
        return line, "", job.id, gr.Timer(active=True)

    def poll(job_id: str) -> tuple[Any, ...]:
        job = find_job(board.jobs, "export", job_id)
        if job is None:
            return gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip()
        line, running = job_status(board.jobs, job)
        log_text = board.jobs.log_text(job)
        if running:
            return line, log_text, gr.skip(), gr.skip()
        folders = export_folders(exports_dir, board.runs_dir)
        done = job.target if any(value == job.target for _, value in folders) else None
        return line, log_text, gr.Timer(active=False), gr.update(choices=folders, value=done)

    def attach() -> tuple[Any, ...]:
        """On page load: the latest export job (re-attached while it runs) and the newest folder."""
        folders = export_folders(exports_dir, board.runs_dir)
        newest = folders[0][1] if folders else None
        job = board.jobs.latest("export")
        if job is None:
            return gr.skip(), gr.skip(), "", gr.skip(), gr.update(choices=folders, value=newest)
        line, running = job_status(board.jobs, job)
        return (
            line,
            board.jobs.log_text(job),
            job.id,
            gr.Timer(active=running),
            gr.update(choices=folders, value=newest),
        )

    def stop_export(job_id: str) -> str:
        job = find_job(board.jobs, "export", job_id)
        if job is None:
            return status_html("no export is running")
        board.jobs.stop(job)
        return status_html("stopping the export…")

    start.click(
        start_export,
        inputs=[source, quants, prompts, max_prompts, skip_eval, force],
        outputs=[status, log, watching, timer],
    )
    stop.click(stop_export, inputs=[watching], outputs=[status])
    timer.tick(poll, inputs=[watching], outputs=[status, log, timer, past], show_progress="hidden")
    past.change(
        show,
        inputs=[past],
        outputs=[status, recommendation, table, modelfile, serve, files, answers],
    )
    board.on_load(attach, [], [status, log, watching, timer, past])
    board.on_load(lambda: gr.update(choices=source_choices(board.runs_dir)), [], [source])
