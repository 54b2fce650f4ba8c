"""Data: upload or pick data files (or a LLaMA-Factory dataset_info.json folder) and check them as
`slm data validate` does: format per file, every problem at file:line, token stats with a length
histogram, and a rendered sample whose no-loss part is greyed."""

from __future__ import annotations

from typing import Any

from slmkit.config import describe, field_default
from slmkit.data.config import DataConfig, data_config
from slmkit.data.loader import FORMAT_CHOICES
from slmkit.data.validate import ValidationReport, validate_data
from slmkit.models.templates import TEMPLATE_NAMES
from slmkit.ui.context import Board
from slmkit.ui.data_view import (
    FILE_COLUMNS,
    PROBLEM_COLUMNS,
    cached_tokenizer,
    data_paths,
    file_rows,
    histogram_figure,
    problem_rows,
    report_stats,
    sample_html,
    stats_markdown,
)
from slmkit.ui.messages import reports_errors, status_html

OWN_TEMPLATE = "(model's own)"


def check_data(
    board: Board,
    picked: str,
    uploaded: list[str] | None,
    model: str,
    fmt: str,
    template: str,
    cutoff_len: float,
    train_on_prompt: bool,
) -> tuple[ValidationReport, Any]:
    """`slm data validate` on the picked and uploaded files, with the model's tokenizer."""
    config = data_config(
        files=data_paths(picked, uploaded, board.folder("uploads")),
        format=fmt,
        template=None if template == OWN_TEMPLATE else template,
        cutoff_len=int(cutoff_len),
        overflow=field_default(DataConfig, "overflow"),
        train_on_prompt=train_on_prompt,
        eval=[],
        names=None,
    )
    tokenizer = cached_tokenizer(model)
    return validate_data(config, tokenizer), tokenizer


def build(board: Board) -> None:
    import gradio as gr

    inputs, check = _inputs()
    view = _report_view()
    status, index, sample, state = view[0], view[5], view[6], view[7]

    @reports_errors(outputs=8)
    def run_check(*values: Any) -> tuple[Any, ...]:
        report, tokenizer = check_data(board, *values)
        summary = report_stats(report)
        n_samples = len(report.tokenized.samples) if report.tokenized else 0
        kind = "ok" if report.ok else "error"
        line = (
            f"{len(report.loaded.records)} valid record(s), {report.n_errors} error(s), "
            f"{report.n_warnings} warning(s)"
        )
        if not report.ok:
            line = f"error: validation failed: {line} (listed below)"
        return (
            status_html(line, kind),
            file_rows(report),
            problem_rows(report.problems),
            stats_markdown(report, summary),
            histogram_figure(summary),
            gr.Slider(maximum=max(n_samples - 1, 1), value=0),
            sample_html(report, 0, tokenizer),
            (report, tokenizer),
        )

    @reports_errors(outputs=2)
    def show_sample(i: float, held: tuple[ValidationReport, Any] | None) -> tuple[Any, ...]:
        if held is None:
            return gr.skip(), ""
        return gr.skip(), sample_html(held[0], int(i), held[1])

    check.click(run_check, inputs=inputs, outputs=view)
    index.release(show_sample, inputs=[index, state], outputs=[status, sample])


def _inputs() -> tuple[list[Any], Any]:
    """The data (paths or uploads), the model and template, format, cutoff, train on prompt (in
    `check_data`'s order), and the Check button."""
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=3):
            picked = gr.Textbox(
                label="data files or folders on this machine (one per line)",
                info=describe(DataConfig, "files"),
                lines=2,
                elem_id="data-paths",
            )
            uploaded = gr.File(
                label="or upload files (a dataset_info.json with the files it names)",
                file_count="multiple",
                height=120,
                elem_id="data-upload",
            )
        with gr.Column(scale=2):
            model = gr.Textbox(
                "default",
                label="model (tokenizer and chat template for token checks; `none` skips them)",
                elem_id="data-model",
            )
            with gr.Row():
                fmt = gr.Dropdown(
                    list(FORMAT_CHOICES),
                    value=field_default(DataConfig, "format"),
                    label="format",
                    elem_id="data-format",
                )
                template = gr.Dropdown(
                    [OWN_TEMPLATE, *TEMPLATE_NAMES],
                    value=OWN_TEMPLATE,
                    label="chat template",
                    elem_id="data-template",
                )
            with gr.Row():
                cutoff = gr.Number(
                    field_default(DataConfig, "cutoff_len"),
                    label="cutoff_len",
                    precision=0,
                    elem_id="data-cutoff",
                )
                on_prompt = gr.Checkbox(
                    field_default(DataConfig, "train_on_prompt"),
                    label="train on prompt",
                    elem_id="data-train-on-prompt",
                )
            check = gr.Button("Check data", variant="primary", elem_id="data-check")
    return [picked, uploaded, model, fmt, template, cutoff, on_prompt], check


def _report_view() -> list[Any]:
    """What a check shows: status, files, problems, statistics, the length histogram, the sample
    slider and the rendered sample, and the report they come from."""
    import gradio as gr

    status = gr.HTML(status_html("pick or upload data, then Check data"), elem_id="data-status")
    files = gr.Dataframe(
        headers=FILE_COLUMNS, interactive=False, label="files", elem_id="data-files"
    )
    problems = gr.Dataframe(
        headers=PROBLEM_COLUMNS,
        interactive=False,
        wrap=True,
        label="problems (file:line, field, what is wrong)",
        max_height=320,
        column_widths=["8%", "32%", "10%", "50%"],
        elem_id="data-problems",
    )
    with gr.Row():
        stats = gr.Markdown(elem_id="data-stats")
        histogram = gr.Plot(histogram_figure(None), show_label=False, elem_id="data-histogram")
    index = gr.Slider(
        0, 1, value=0, step=1, label="sample to render", interactive=True, elem_id="data-index"
    )
    sample = gr.HTML(elem_id="data-sample")
    state = gr.State(None)

    return [status, files, problems, stats, histogram, index, sample, state]
