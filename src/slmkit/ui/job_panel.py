"""The controls every background-job tab shares (Evaluate, Export): Start/Stop, the status line,
the log, the list of finished result folders, and the 2 s poll that follows the running job.
A page load re-attaches to the tab's latest job and shows the newest result folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slmkit.ui.context import Board
from slmkit.ui.jobs import Job, JobRunner
from slmkit.ui.messages import status_html

POLL_S = 2.0
Folders = Callable[[], list[tuple[str, str]]]


@dataclass
class JobPanel:
    """The components of one tab's job controls; `past` lists the finished result folders."""

    kind: str  # the JobRunner kind: eval | export
    noun: str  # what the status line calls it: evaluation | export
    start: Any
    stop: Any
    status: Any
    log: Any
    past: Any
    watching: Any
    timer: Any
    folders: Folders

    def started(self, job: Job, argv: list[str]) -> tuple[Any, ...]:
        """Outputs of a start handler: [status, log, watching, timer]."""
        import gradio as gr

        line = status_html(f"{self.noun} started: slm {' '.join(argv)}")
        return line, "", job.id, gr.Timer(active=True)

    @property
    def start_outputs(self) -> list[Any]:
        return [self.status, self.log, self.watching, self.timer]


def job_panel(
    board: Board,
    kind: str,
    noun: str,
    start_label: str,
    hint: str,
    past_label: str,
    folders: Folders,
) -> JobPanel:
    """Lay out the controls (Start, Stop, status, log, past results) and wire Stop, the poll and
    the page-load re-attach. The tab wires Start itself (its form makes the command line)."""
    import gradio as gr

    with gr.Row():
        start = gr.Button(start_label, variant="primary", scale=0, elem_id=f"{kind}-start")
        stop = gr.Button("Stop", scale=0, elem_id=f"{kind}-stop")
        status = gr.HTML(status_html(hint), elem_id=f"{kind}-status")
    with gr.Accordion("log", open=False):
        log = gr.Textbox(lines=10, max_lines=20, show_label=False, elem_id=f"{kind}-log")
    past = gr.Dropdown(
        label=past_label,
        choices=folders(),
        value=None,  # set on page load, so that its change renders the newest
        elem_id=f"{kind}-past",
    )
    panel = JobPanel(
        kind,
        noun,
        start,
        stop,
        status,
        log,
        past,
        gr.State(""),
        gr.Timer(POLL_S, active=False),
        folders,
    )
    _wire(board, panel)
    return panel


def job_status(jobs: JobRunner, job: Job) -> tuple[str, bool]:
    """(status box HTML, still running) for a job: the CLI's one-line error when it failed."""
    state = jobs.state(job)
    if state.status == "running":
        return status_html(f"{state.message}: {_last_line(jobs.log_text(job, 2000))}"), True
    if state.status == "finished":
        return status_html(f"{state.message}: {job.target}", "ok"), False
    if state.status == "failed":
        return status_html(state.message, "error"), False
    return status_html(state.message), False


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:160] if lines else "starting"


def _wire(board: Board, panel: JobPanel) -> None:
    import gradio as gr

    def poll(job_id: str) -> tuple[Any, ...]:
        job = board.jobs.get(panel.kind, job_id) if job_id else None
        if job is None:
            return gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip()
        line, running = job_status(board.jobs, job)
        log_text = board.jobs.log_text(job)
        if running:
            return line, log_text, gr.skip(), gr.skip()
        folders = panel.folders()
        done = job.target if any(value == job.target for _, value in folders) else None
        return line, log_text, gr.Timer(active=False), gr.update(choices=folders, value=done)

    def attach() -> tuple[Any, ...]:
        """On page load: the latest job (re-attached while it runs) and the newest result folder."""
        folders = panel.folders()
        newest = gr.update(choices=folders, value=folders[0][1] if folders else None)
        job = board.jobs.latest(panel.kind)
        if job is None:
            return gr.skip(), gr.skip(), "", gr.skip(), newest
        line, running = job_status(board.jobs, job)
        return line, board.jobs.log_text(job), job.id, gr.Timer(active=running), newest

    def stop(job_id: str) -> str:
        job = board.jobs.get(panel.kind, job_id) if job_id else None
        if job is None:
            return status_html(f"no {panel.noun} is running")
        board.jobs.stop(job)
        return status_html(f"stopping the {panel.noun}…")

    watched = [panel.status, panel.log, panel.timer, panel.past]
    panel.stop.click(stop, inputs=[panel.watching], outputs=[panel.status])
    panel.timer.tick(poll, inputs=[panel.watching], outputs=watched, show_progress="hidden")
    board.on_load(attach, [], [panel.status, panel.log, panel.watching, panel.timer, panel.past])
