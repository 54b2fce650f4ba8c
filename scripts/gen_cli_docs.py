"""Write docs/cli.md from the real `slm --help` of every command (tests fail when it is stale)."""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.testing import CliRunner

from slmkit.cli import app


def command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    if hasattr(group, "commands"):  # a group (typer vendors its own click)
        for name in sorted(group.commands):
            paths += command_paths(group.commands[name], (*prefix, name))
    return paths


def render() -> str:
    runner = CliRunner()
    root = typer.main.get_command(app)
    parts = [
        "# `slm` command reference\n",
        "Generated from the real CLI by `make docs-cli` (`scripts/gen_cli_docs.py`); a test fails when it is stale.\n",
    ]
    for path in command_paths(root):
        result = runner.invoke(
            app,
            [*path, "--help"],
            env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"},
            prog_name="slm",
        )
        title = " ".join(("slm", *path))
        body = "\n".join(line.rstrip() for line in result.output.strip().splitlines())
        parts.append(f"## `{title}`\n\n```text\n{body}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render())
