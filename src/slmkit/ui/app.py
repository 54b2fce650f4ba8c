"""The board's page: one tab per stage, each built by its module in `slmkit.ui.tabs`."""

from __future__ import annotations

import importlib
import os
from typing import Any

from slmkit import console
from slmkit.ui.config import BoardConfig
from slmkit.ui.context import Board

TABS = (
    ("Data", "data"),
    ("Train", "train"),
    ("Runs", "runs"),
    ("Evaluate", "evaluate"),
    ("Export", "export"),
    ("Chat", "chat"),
    ("Monitor", "monitor"),
)
CSS = """
.slm-status { padding: 6px 10px; border-radius: 6px; font-family: monospace; }
.slm-error { background: #fef2f2; color: #b91c1c; border: 1px solid #fecaca; }
.slm-ok { background: #f0fdf4; color: #166534; border: 1px solid #bbf7d0; }
.slm-info { background: #f8fafc; color: #334155; border: 1px solid #e2e8f0; }
.slm-masked { color: #9ca3af; }
.slm-trained { color: #111827; background: #fef9c3; }
"""


def build_board(board: Board) -> Any:
    """The Gradio Blocks of the board (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    with gr.Blocks(title="slmkit board", analytics_enabled=False) as blocks:
        gr.Markdown(f"## slmkit board\nRuns folder: `{board.runs_dir}`")
        with gr.Tabs():
            for title, name in TABS:
                module = importlib.import_module(f"slmkit.ui.tabs.{name}")
                with gr.Tab(title, id=name, elem_id=f"tab-{name}"):
                    module.build(board)
        for fn, inputs, outputs in board.loaders:
            blocks.load(fn, inputs=inputs, outputs=outputs, show_progress="hidden")
    return blocks


IDLE_POLL_S = 0.02


def calm_idle_queue(blocks: Any) -> None:
    """Gradio's event queue polls every 1 ms while idle: measured at ~7% of a core here with no page
    open. Polling every 20 ms delays an event by at most that, which nobody sees."""
    queue = getattr(blocks, "_queue", None)
    if queue is not None:
        queue.sleep_when_free = max(queue.sleep_when_free, IDLE_POLL_S)
        queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, 0.1)


def launch_board(config: BoardConfig) -> None:
    """Serve the board until Ctrl-C."""
    board = Board(config.runs)
    blocks = build_board(board)
    console.info(f"board on http://{config.host}:{config.port} (runs: {board.runs_dir})")
    blocks.queue(default_concurrency_limit=4)
    calm_idle_queue(blocks)
    blocks.launch(
        server_name=config.host,
        server_port=config.port,
        auth=config.credentials(),
        show_error=False,
        quiet=True,
        ssr_mode=False,
        footer_links=[],
        css=CSS,
        allowed_paths=[str(board.runs_dir), str(board.work_dir)],  # downloads of reports/exports
    )
