"""CLI: `slm logs`, the audit log read back: recent requests and statistics (the default),
`feedback`, `keys`, `routes` and `ab MODEL`. Thin: parse, call `serve/logs.py`, print."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer

from slmkit.console import console, out, result_line
from slmkit.errors import ConfigError
from slmkit.serve.commands import load_serve_config
from slmkit.state.config import as_target

logs_app = typer.Typer(
    invoke_without_command=True,
    help="The audit log: recent requests and latency statistics (the default), feedback, "
    "per-key usage, routes, A/B versions.",
)

Db = Annotated[
    str | None,
    typer.Option(
        metavar="FILE|URL",
        help="Audit log: a SQLite file or a postgresql:// URL (default: from --config, its "
        "state.database or audit.path, else $SLM_HOME/serve/audit.db).",
    ),
]
Config = Annotated[
    Path | None, typer.Option("--config", "-c", help="serve.yaml (audit path and alert rules).")
]
Window = Annotated[
    str, typer.Option(help="Statistics window: seconds, or with a unit (90s, 5m, 1h, 7d).")
]
Last = Annotated[int, typer.Option(help="Recent rows to list.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print as JSON.")]


def audit_db(db: str | None, config: Path | None) -> Path | str:
    """The audit log to read: --db (a file or a URL), else where the serve config writes it."""
    if db is not None:
        return as_target(db)
    return load_serve_config(config, []).audit_target()


@logs_app.callback()
def logs_cmd(
    ctx: typer.Context,
    db: Db = None,
    config: Config = None,
    window: Window = "300",
    last: Last = 10,
    as_json: AsJson = False,
    feedback: Annotated[bool, typer.Option("--feedback", hidden=True)] = False,
    keys: Annotated[bool, typer.Option("--keys", hidden=True)] = False,
    routes: Annotated[bool, typer.Option("--routes", hidden=True)] = False,
    ab: Annotated[str | None, typer.Option("--ab", hidden=True)] = None,
) -> None:
    """Recent requests, p50/p95/p99 latency, error rate and tokens/s from the audit log; alerts."""
    moved = {"--feedback": feedback, "--keys": keys, "--routes": routes, "--ab": ab is not None}
    for flag, given in moved.items():
        if given:  # the flags these views had before they were subcommands
            view = flag.removeprefix("--") + (f" {ab}" if flag == "--ab" else "")
            raise ConfigError(f"`slm logs {flag}` is now `slm logs {view}` (a subcommand)")
    if ctx.invoked_subcommand is None:
        requests_cmd(db, config, window, last, as_json)


@logs_app.command("requests")
def requests_cmd(
    db: Db = None,
    config: Config = None,
    window: Window = "300",
    last: Last = 10,
    as_json: AsJson = False,
) -> None:
    """Recent requests, p50/p95/p99 latency, error rate and tokens/s; the alert rules that fire."""
    from rich.table import Table

    from slmkit.serve.logs import check_alerts, parse_window, recent_requests, window_stats

    path = audit_db(db, config)
    window_s = parse_window(window)
    stats = window_stats(path, window_s)
    alerts = check_alerts(path, load_serve_config(config, []).alerts)
    if as_json:
        data = {
            **stats.__dict__,
            "error_rate": stats.error_rate,
            "alerts": [a.__dict__ for a in alerts],
        }
        result_line(json.dumps(data, indent=2))
        return
    table = Table("time", "id", "model", "status", "tokens in/out", "latency", "ttft")
    for row in recent_requests(path, last):
        table.add_row(
            _time(row["ts"]),
            row["id"],
            str(row["model"]),
            str(row["status"]),
            f"{row['prompt_tokens'] or 0}/{row['completion_tokens'] or 0}",
            _ms(row["latency_s"]),
            _ms(row["ttft_s"]),
        )
    out.print(table)
    out.print(
        f"last {window_s:g} s: {stats.requests} requests, error rate {stats.error_rate:.1%}, "
        f"latency p50 {_ms(stats.latency_p50)} p95 {_ms(stats.latency_p95)} p99 {_ms(stats.latency_p99)}, "
        f"ttft p50 {_ms(stats.ttft_p50)}, {stats.tokens_per_s:.1f} output tokens/s"
    )
    for alert in alerts:
        console.print(f"[red]ALERT {alert.rule}:[/red] {alert.message}")


@logs_app.command("feedback")
def feedback_cmd(db: Db = None, config: Config = None, last: Last = 10) -> None:
    """Recent feedback: the request it rates, its model, the rating and any correction."""
    from rich.table import Table

    from slmkit.serve.logs import feedback_rows

    table = Table("time", "request", "model", "rating", "correction")
    for row in feedback_rows(audit_db(db, config), last):
        table.add_row(
            _time(row["ts"]),
            row["request_id"],
            row["model"] or "-",
            f"{row['rating']:+d}",
            (row["correction"] or "")[:60],
        )
    out.print(table)


@logs_app.command("keys")
def keys_cmd(
    db: Db = None, config: Config = None, window: Window = "300", as_json: AsJson = False
) -> None:
    """Requests, 429s and tokens per API key name over the window."""
    from slmkit.serve.logs import parse_window

    _print_key_stats(audit_db(db, config), parse_window(window), as_json)


@logs_app.command("routes")
def routes_cmd(
    db: Db = None, config: Config = None, window: Window = "300", as_json: AsJson = False
) -> None:
    """Per route: requests, share answered locally, rule hits, escalations and fallbacks.

    Over the window; the local share is the share the chain's first member answered (the chains
    come from --config)."""
    from slmkit.serve.logs import parse_window

    chains = {r.id: r.chain for r in load_serve_config(config, []).routes}
    _print_route_stats(audit_db(db, config), parse_window(window), chains, as_json)


@logs_app.command("ab")
def ab_cmd(
    model: Annotated[str, typer.Argument(help="The A/B split model id (its `ab:` arms).")],
    db: Db = None,
    config: Config = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Start at a date (2026-11-27), an ISO time (UTC unless it says) or a duration "
            "back from now (7d, 12h). Default: all."
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """The versions of an A/B split model compared, and whether the difference is significant.

    Per version: requests, errors, latency, feedback rate, thumbs-up share (95% CI), escalation
    rate."""
    _print_ab_report(audit_db(db, config), model, since, config, as_json)


def _print_key_stats(path: Path | str, window: float, as_json: bool) -> None:
    from rich.table import Table

    from slmkit.serve.logs import key_stats

    stats = key_stats(path, window)
    if as_json:
        data = [{**s.__dict__, "tokens": s.tokens} for s in stats]
        result_line(json.dumps(data, indent=2))
        return
    table = Table("key", "requests", "429s", "prompt tokens", "completion tokens", "tokens")
    for s in stats:
        counts = (s.requests, s.rejected, s.prompt_tokens, s.completion_tokens, s.tokens)
        table.add_row(s.key, *(str(n) for n in counts))
    out.print(table)
    out.print(f"last {window:g} s, {len(stats)} keys")


def _print_route_stats(
    path: Path | str, window: float, chains: dict[str, list[str]], as_json: bool
) -> None:
    from rich.table import Table

    from slmkit.serve.logs import route_stats

    stats = route_stats(path, window, chains=chains)
    if as_json:
        data = [{**s.__dict__, "local_share": s.local_share} for s in stats]
        result_line(json.dumps(data, indent=2))
        return
    table = Table("route", "requests", "local share", "by rule", "escalated", "fallback")
    for s in stats:
        share = "-" if s.local_share is None else f"{s.local_share:.0%} ({s.first_member})"
        table.add_row(
            s.route,
            str(s.requests),
            share,
            _counts(s.count("rule:")),
            _counts(s.count("escalated:")),
            _counts(s.count("fallback:")),
        )
    out.print(table)
    out.print(
        f"last {window:g} s, {len(stats)} route(s); local share = answered by the first member"
    )


def _print_ab_report(
    path: Path | str, model: str, since: str | None, config: Path | None, as_json: bool
) -> None:
    from rich.table import Table

    from slmkit.serve.ab_report import ab_report
    from slmkit.serve.logs import parse_time

    entry = next((m for m in load_serve_config(config, []).models if m.id == model), None)
    order = [arm.version for arm in entry.ab or []] if entry is not None else []
    start = parse_time(since, "--since") if since is not None else None
    report = ab_report(path, model, start, order)
    if as_json:
        result_line(json.dumps(report.as_dict(), indent=2))
        return
    table = Table(
        "version", "requests", "errors", "p50", "p95", "rated", "thumbs up (95% CI)", "escalated"
    )
    for v in report.versions:
        ci = v.thumbs_up_ci
        share = "-" if ci is None else f"{v.thumbs_up_share:.0%} ({ci[0]:.0%}-{ci[1]:.0%})"
        table.add_row(
            v.version,
            str(v.requests),
            str(v.errors),
            _ms(v.latency_p50),
            _ms(v.latency_p95),
            f"{v.rated} ({v.feedback_rate:.0%})",
            share,
            f"{v.escalated} ({v.escalation_rate:.0%})",
        )
    out.print(table)
    for c in report.comparisons:
        out.print(f"thumbs up: {c.verdict}", markup=False)
        if c.latency_p_value is not None:
            out.print(
                f"latency: {c.version} vs {c.baseline}, Mann-Whitney p={c.latency_p_value:.2g}",
                markup=False,
            )


def _counts(by_name: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in by_name.items()) or "-"


def _time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def register(app: typer.Typer) -> None:
    app.add_typer(logs_app, name="logs")
