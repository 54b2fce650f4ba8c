"""CLI: `slm feedback export`, `slm feedback stats`. Thin: parse, call the stage, print."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from slmkit.errors import SlmError
from slmkit.monitor.serve_section import MonitoredServeConfig
from slmkit.serve.config import AuditSettings, OutputFilter, ServeConfig
from slmkit.state.config import as_target

if TYPE_CHECKING:
    from rich.table import Table

    from slmkit.feedback.export import ExportReport

AUDIT_HELP = (
    "Audit log of `slm serve`: a SQLite file or a postgresql:// URL (default: from --config, "
    "its state.database or audit.path, else the serve default)."
)
SINCE_HELP = "Start: a date (2026-11-27), an ISO time (UTC unless it says) or a duration (7d, 12h)."

feedback_app = typer.Typer(
    help="Turn the gateway's feedback into training and eval data; feedback statistics.",
    no_args_is_help=True,
)


def _serve_config(config: Path | None) -> ServeConfig | None:
    from slmkit.config import load_config

    if config is None:
        return None
    return load_config(config, MonitoredServeConfig, [])  # serve.yaml may have a `monitor:` section


def _audit_path(audit: str | None, cfg: ServeConfig | None) -> Path | str:
    if audit is not None:
        return as_target(audit)
    return cfg.audit_target() if cfg is not None else AuditSettings().db_path()


@feedback_app.command("export")
def export_cmd(
    since: Annotated[str, typer.Option(help=SINCE_HELP)],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="sft (messages) | dpo (preference pairs: correction chosen, original rejected) "
            "| kto (every rated answer labelled true/false: thumbs up, thumbs down, corrections) "
            "| eval (an eval set whose references are approved or corrected answers).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write.")],
    until: Annotated[
        str | None, typer.Option(help="End (exclusive), same forms as --since.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Only requests for this model id or answered by it (a route's member)."),
    ] = None,
    audit: Annotated[str | None, typer.Option(metavar="FILE|URL", help=AUDIT_HELP)] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="serve.yaml: its audit path and output filter."),
    ] = None,
) -> None:
    """Rated and escalated answers -> SFT, DPO, KTO or eval data: latest feedback per request,
    de-duplicated, PII-masked with the gateway's output filter, validated; counts printed."""
    from slmkit.console import out as stdout
    from slmkit.feedback.export import TARGETS, export_feedback
    from slmkit.serve.logs import parse_time

    if to not in TARGETS:
        raise SlmError(f"--to: {to!r} is not one of {', '.join(TARGETS)}")
    cfg = _serve_config(config)
    start = parse_time(since, "--since")
    end = parse_time(until, "--until") if until is not None else None
    if end is not None and end <= start:
        raise SlmError(f"--until: {until!r} is not after --since {since!r}")
    mask = (cfg.output_filter if cfg is not None else OutputFilter()).model_copy(
        update={"redact_pii": True}
    )
    report = export_feedback(
        _audit_path(audit, cfg),
        to,  # type: ignore[arg-type]  # checked against TARGETS above
        out,
        since=start,
        until=end,
        model=model,
        output_filter=mask,
    )
    stdout.print(_export_table(report))
    if report.path is None:
        raise SlmError(
            f"nothing to export from {report.read} answered request(s); {out} not written"
        )
    stdout.print(f"wrote {report.exported} {to} rows to {report.path}", soft_wrap=True)


def _export_table(report: ExportReport) -> Table:
    from rich.table import Table

    from slmkit.feedback.export import SOURCES

    table = Table("", "count", title=f"feedback -> {report.target}", title_justify="left")
    table.add_row("requests read", str(report.read))
    table.add_row("rated", str(report.rated))
    for source in SOURCES:
        table.add_row(f"exported: {source}", str(report.sources.get(source, 0)))
    table.add_row("exported", str(report.exported), style="bold")
    for reason, count in sorted(report.skipped.items()):
        table.add_row(f"skipped: {reason}", str(count))
    table.add_row("PII spans masked", str(report.masked))
    return table


@feedback_app.command("stats")
def stats_cmd(
    since: Annotated[str | None, typer.Option(help=SINCE_HELP + " Default: all.")] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Only requests for this model id or answered by it (a route's member)."),
    ] = None,
    audit: Annotated[str | None, typer.Option(metavar="FILE|URL", help=AUDIT_HELP)] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="serve.yaml: its audit path.")
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Failing tags to show per model.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Per answering model: requests, rated share, thumbs-up share, corrections, escalations and
    the top tags of thumbs-down feedback."""
    from rich.table import Table

    from slmkit.console import out as stdout
    from slmkit.feedback.stats import feedback_stats
    from slmkit.serve.logs import parse_time

    start = parse_time(since, "--since") if since is not None else None
    lines = feedback_stats(_audit_path(audit, _serve_config(config)), start, model)
    if as_json:
        stdout.print_json(data=[line.as_dict(top) for line in lines])
        return
    table = Table("model", "requests", "rated", "up", "down", "corrected", "escalated")
    for line in lines:
        up = f"{line.up_share:.0%}" if line.up_share is not None else "-"
        table.add_row(
            line.model,
            str(line.requests),
            f"{line.rated} ({line.rated_share:.0%})",
            up,
            str(line.down),
            str(line.corrections),
            str(line.escalated),
        )
    stdout.print(table)
    for line in lines if len(lines) == 1 else lines[:-1]:
        tags = ", ".join(f"{tag} {n}" for tag, n in line.failing_tags.most_common(top))
        stdout.print(f"top failing tags of {line.model}: {tags or '-'}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(feedback_app, name="feedback")
