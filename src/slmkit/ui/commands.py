"""`slm ui`: the web board."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import typer

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
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"--port {port}: cannot listen on {host}:{port} ({exc.strerror})",
                hint="choose another --port",
            ) from None


def register(app: typer.Typer) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app.command("ui")(ui_cmd)
