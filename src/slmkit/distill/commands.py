"""CLI: `slm distill`. Thin: parse, call the stage, print the counts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmkit.config import describe, from_options, option
from slmkit.distill.config import DistillSettings


def distill_cmd(
    teacher: Annotated[
        str, typer.Option("--teacher", help=describe(DistillSettings, "teacher"))
    ] = ...,  # type: ignore[assignment]
    prompts: Annotated[
        Path, typer.Option("--prompts", help=describe(DistillSettings, "prompts"))
    ] = ...,  # type: ignore[assignment]
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="SFT data to write (JSONL, appended; a re-run skips prompts already in it or in "
            "OUT.rejected.jsonl).",
        ),
    ] = ...,  # type: ignore[assignment]
    teacher_model: str | None = option(DistillSettings, "teacher_model", "--teacher-model"),
    api_key_env: str | None = option(DistillSettings, "api_key_env", "--api-key-env"),
    system: str | None = option(DistillSettings, "system", "--system"),
    concurrency: int = option(DistillSettings, "concurrency"),
    max_tokens: int = option(DistillSettings, "max_tokens"),
    temperature: float = option(DistillSettings, "temperature"),
    retries: int = option(DistillSettings, "retries"),
    timeout_s: float = option(DistillSettings, "timeout_s", "--timeout"),
    max_answer_chars: int | None = option(DistillSettings, "max_answer_chars"),
    keep_truncated: bool = option(DistillSettings, "keep_truncated", "--keep-truncated"),
) -> None:
    """Ask a teacher model for answers to a prompt set and keep the good ones as SFT data."""
    from rich.table import Table

    from slmkit.console import out as stdout
    from slmkit.distill.filters import REASONS
    from slmkit.distill.run import check_complete, distill

    settings = from_options(
        DistillSettings,
        {
            "teacher": teacher,
            "prompts": str(prompts),
            "teacher_model": teacher_model,
            "api_key_env": api_key_env,
            "system": system,
            "concurrency": concurrency,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "retries": retries,
            "timeout_s": timeout_s,
            "max_answer_chars": max_answer_chars,
            "keep_truncated": keep_truncated,
        },
        flags={"timeout_s": "--timeout"},
    )
    result = distill(settings, out)
    counts = result.counts
    table = Table("prompts", "count")
    table.add_row("in the file", str(counts["prompts"]))
    table.add_row("done before (skipped)", str(counts["done_before"]))
    table.add_row("duplicate (skipped)", str(counts["duplicate"]))
    table.add_row("kept", str(counts["accepted"]))
    for reason in REASONS:
        table.add_row(f"rejected: {reason}", str(counts[reason]))
    table.add_row("no answer (failed)", str(counts["failed"]))
    stdout.print(table)
    stdout.print(f"data: {result.output}", soft_wrap=True, markup=False)
    stdout.print(f"rejected: {result.rejected}", soft_wrap=True, markup=False)
    check_complete(result)


def register(app: typer.Typer) -> None:
    app.command("distill")(distill_cmd)
