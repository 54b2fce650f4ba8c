"""`slm ui`: the web board."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from slmkit.child_process import port_problem
from slmkit.config import from_options, option
from slmkit.errors import ConfigError
from slmkit.ui.config import BoardConfig


def ui_cmd(
    host: str = option(BoardConfig, "host", "--host"),
    port: int = option(BoardConfig, "port", "--port"),
    runs: Path = option(BoardConfig, "runs", "--runs"),
    auth: str | None = option(BoardConfig, "auth", "--auth", envvar="SLM_UI_AUTH"),
) -> None:
    """Open the web board: data, training, runs, evaluation, export, chat and monitoring."""
    config = from_options(BoardConfig, {"host": host, "port": port, "runs": runs, "auth": auth})
    _check_port_free(config.host, config.port)
    from slmkit.ui.app import launch_board

    launch_board(config)


def _check_port_free(host: str, port: int) -> None:
    problem = port_problem(host, port)
    if problem:
        raise ConfigError(
            f"--port {port}: cannot listen on {host}:{port} ({problem})",
            hint="choose another --port",
        )


def register(app: typer.Typer) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app.command("ui")(ui_cmd)
