"""Evaluate: pick models (the base, runs, exported GGUFs) and an eval set, run `slm eval` in the
background, then show its summary with CIs and verdicts, the per-tag breakdown, the answers where
the models differ most, and the HTML report to download."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.ui.context import Board
from slmkit.ui.eval_view import EvalReport, eval_argv, eval_defaults, eval_folders, model_choices
from slmkit.ui.export_view import file_links
from slmkit.ui.job_panel import job_panel
from slmkit.ui.messages import reports_errors

DEMO_EVAL_SET = Path("examples/data/support_eval.jsonl")
INTRO = (
    "Same questions to every model at temperature 0 on the serving engines; fact recall, exact "
    "match, ROUGE-L, similarity, latency; a bootstrap CI on the main metric and Δ against the "
    "first model. Runs `slm eval` in the background; a reloaded page finds it again."
)


@dataclass
class ReportView:
    """A finished evaluation: headline, summary, verdict, per-tag table, differing answers, files."""

    headline: Any
    summary: Any
    verdict: Any
    tags: Any
    answers: Any
    files: Any

    @property
    def outputs(self) -> list[Any]:
        return [self.headline, self.summary, self.verdict, self.tags, self.answers, self.files]


def build(board: Board) -> None:
    import gradio as gr

    evals_dir, exports_dir = board.folder("evals"), board.folder("exports")
    gr.Markdown(INTRO)
    models, more, data, upload = _choices(board, exports_dir)
    criteria = _criteria(eval_defaults())
    panel = job_panel(
        board,
        "eval",
        "evaluation",
        "Evaluate",
        "pick models and an eval set, then Evaluate",
        "evaluation",
        lambda: eval_folders(evals_dir),
    )
    view = _report_view()

    @reports_errors(outputs=4)
    def start_eval(
        picked: list[str] | None,
        others: str | None,
        data_file: str | None,
        tokens: float | None,
        first_n: float | None,
        with_similarity: bool,
        gain: str | None,
        floor: str | None,
    ) -> tuple[Any, ...]:
        argv = eval_argv(
            picked or [],
            others or "",
            data_file or "",
            evals_dir,
            max_tokens=tokens,
            limit=first_n,
            similarity=with_similarity,
            min_gain=gain or "",
            min_value=floor or "",
        )
        return panel.started(board.jobs.start("eval", argv, argv[argv.index("-o") + 1]), argv)

    def uploaded(file: Any) -> str:
        target = board.folder("uploads") / Path(str(file)).name
        shutil.copyfile(str(file), target)
        return str(target)

    panel.start.click(
        start_eval, inputs=[models, more, data, *criteria], outputs=panel.start_outputs
    )
    upload.upload(uploaded, inputs=[upload], outputs=[data])
    panel.past.change(
        show_report, inputs=[panel.past], outputs=[panel.status, *view.outputs, panel.log]
    )
    board.on_load(
        lambda: gr.update(choices=model_choices(board.runs_dir, exports_dir)), [], [models]
    )


def _choices(board: Board, exports_dir: Path) -> tuple[Any, Any, Any, Any]:
    """The models to compare (picked, or typed as NAME=REF) and the eval set (a path or upload)."""
    import gradio as gr

    with gr.Row():
        models = gr.Dropdown(
            choices=model_choices(board.runs_dir, exports_dir),
            value=["base=default"],
            multiselect=True,
            label="models (the first is the baseline)",
            elem_id="eval-models",
            scale=3,
        )
        more = gr.Textbox(
            label="other models (NAME=REF, comma-separated)",
            placeholder="tuned=/path/to/hf-folder,q4=/path/model-q4_k_m.gguf",
            elem_id="eval-more",
            scale=2,
        )
    with gr.Row():
        data = gr.Textbox(
            value=str(DEMO_EVAL_SET) if DEMO_EVAL_SET.is_file() else "",
            label="eval set (JSONL: prompt or messages, reference, must_include, tags)",
            elem_id="eval-data",
            scale=3,
        )
        upload = gr.UploadButton("Upload eval set", file_types=[".jsonl"], scale=0)
    return models, more, data, upload


def _criteria(defaults: dict[str, Any]) -> list[Any]:
    """max tokens, the first N questions, similarity, least gain, least value (in that order)."""
    import gradio as gr

    with gr.Accordion("settings and criteria", open=False), gr.Row():
        max_tokens = gr.Number(
            value=defaults["max_tokens"],
            precision=0,
            label="max tokens per answer",
            elem_id="eval-max-tokens",
        )
        limit = gr.Number(
            value=defaults["limit"], precision=0, label="only the first N questions (0: all)"
        )
        similarity = gr.Checkbox(
            value=defaults["similarity"],
            label="embedding similarity (MiniLM)",
            elem_id="eval-similarity",
        )
        min_gain = gr.Textbox(
            label="least gain over the first model", placeholder="fact_recall=0.3"
        )
        min_value = gr.Textbox(label="least value", placeholder="fact_recall=0.8")
    return [max_tokens, limit, similarity, min_gain, min_value]


def _report_view() -> ReportView:
    import gradio as gr

    headline = gr.Markdown(elem_id="eval-headline")
    summary = gr.Dataframe(label="summary", interactive=False, wrap=True, elem_id="eval-summary")
    verdict = gr.Dataframe(
        label="verdict (criteria)",
        interactive=False,
        wrap=True,
        visible=False,
        elem_id="eval-verdict",
    )
    tags = gr.Dataframe(
        label="per tag (main metric)", interactive=False, wrap=True, elem_id="eval-tags"
    )
    answers = gr.Dataframe(
        label="where the models differ most",
        interactive=False,
        wrap=True,
        elem_id="eval-answers",
    )
    return ReportView(headline, summary, verdict, tags, answers, gr.HTML(elem_id="eval-files"))


@reports_errors(outputs=8)
def show_report(folder: str | None) -> tuple[Any, ...]:
    """A past evaluation's report in the view (status, the six parts, log)."""
    import gradio as gr

    if not folder:
        return (gr.skip(),) * 8
    report = EvalReport.read(Path(folder))
    return (
        gr.skip(),  # the status box keeps the job's last word
        report.headline(),
        report.summary_frame(),
        gr.update(value=report.verdict_frame(), visible=bool(report.data.get("verdict"))),
        report.tag_frame(),
        gr.update(value=report.answers_frame(), column_widths=report.answer_widths()),
        file_links(report.files(), "report (open report.html in a browser)"),
        gr.skip(),
    )
