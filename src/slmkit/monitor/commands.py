"""CLI: `slm monitor`. Thin: parse, run a round (once or on a schedule), print the table."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from slmkit.config import from_options, option
from slmkit.errors import SlmError
from slmkit.monitor.config import MonitorConfig
from slmkit.serve.alert_config import WebhookSettings

FLAGS = {"evals": "--eval", "feedback_audit": "--feedback-audit", "url": "--url"}


def parse_every(text: str) -> float:
    """`90s`, `30m`, `1h`, `1d` -> seconds; one line naming --every otherwise."""
    from slmkit.serve.logs import parse_window

    try:
        return parse_window(text)
    except SlmError:
        raise SlmError(f"--every: {text!r} is not a duration (e.g. 90s, 30m, 1h, 1d)") from None


def print_round(result: Any) -> None:
    from rich.table import Table

    from slmkit.console import out

    table = Table(title=f"slm monitor  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())}")
    for column in ("set", "items", "metric", "baseline", "now", "change", "status"):
        table.add_column(
            column, justify="left" if column in ("set", "metric", "status") else "right"
        )
    for s in result.sets:
        base = "-" if s.baseline is None else f"{s.baseline:.3f}"
        change = "-" if s.change is None else f"{s.change:+.0%}"
        status = f"[red]{s.status}[/red]" if s.status == "drift" else s.status
        table.add_row(s.name, str(s.items), s.metric, base, f"{s.value:.3f}", change, status)
    out.print(table)
    for note in result.notes:
        out.print(f"note: {note}")
    for change in result.changes:
        out.print(f"alert {change['status']}: {change['rule']} (message above)")
    out.print(f"state: {result.state_path}")


def monitor_cmd(
    url: str = option(MonitorConfig, "url", "--url"),
    model: str = option(MonitorConfig, "model", "--model", "-m"),
    evals: list[Path] | None = option(MonitorConfig, "evals", "--eval", metavar="SET"),
    feedback_audit: str | None = option(
        MonitorConfig, "feedback_audit", "--feedback-audit", metavar="FILE|URL"
    ),
    since: str | None = option(MonitorConfig, "since", "--since"),
    baseline: str = option(MonitorConfig, "baseline", "--baseline"),
    threshold: float = option(MonitorConfig, "threshold", "--threshold"),
    main_metric: str = option(MonitorConfig, "main_metric", "--metric"),
    max_tokens: int = option(MonitorConfig, "max_tokens", "--max-tokens"),
    api_key_env: str | None = option(MonitorConfig, "api_key_env", "--api-key-env"),
    webhook: Annotated[
        str | None, typer.Option("--webhook", help="URL that receives drift alerts (JSON POST).")
    ] = None,
    webhook_bearer_env: str | None = option(WebhookSettings, "bearer_env", "--webhook-bearer-env"),
    state: Path | None = option(MonitorConfig, "state", "--state"),
    every: Annotated[
        str, typer.Option("--every", help="Run a round this often (90s, 30m, 1h, 1d).")
    ] = "1h",
    once: Annotated[bool, typer.Option("--once", help="Run one round and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print each round as JSON.")] = False,
) -> None:
    """Re-evaluate a served model; a drop of its main metric fires a drift alert.

    Each round asks the model every question of the eval sets (and of the feedback set from the
    audit log) through its OpenAI API and compares the main metric with the baseline; a relative
    drop beyond the threshold is logged and posted to the webhook, with the retrain commands."""
    from slmkit.console import out, warn
    from slmkit.monitor.drift import check_ready, run_round

    interval = parse_every(every)
    if not evals and feedback_audit is None:
        raise SlmError("give an eval set (--eval SET) or a feedback audit log (--feedback-audit)")
    hook = None
    if webhook is not None:
        hook = {"url": webhook, "bearer_env": webhook_bearer_env}
    elif webhook_bearer_env is not None:
        raise SlmError("--webhook-bearer-env: give --webhook too")
    values = {
        "url": url,
        "model": model,
        "evals": evals or [],
        "feedback_audit": feedback_audit,
        "since": since,
        "baseline": baseline,
        "threshold": threshold,
        "main_metric": main_metric,
        "max_tokens": max_tokens,
        "api_key_env": api_key_env,
        "webhook": hook,
        "state": state,
    }
    config = from_options(MonitorConfig, values, FLAGS)
    check_ready(config)
    while True:
        try:
            result = run_round(config)
        except SlmError as exc:
            if once:
                raise
            warn(f"monitor round failed: {exc}")  # the server may be back by the next round
        else:
            if as_json:
                out.print_json(json.dumps(_as_dict(result)))
            else:
                print_round(result)
        if once:
            return
        time.sleep(interval)


def _as_dict(result: Any) -> dict[str, Any]:
    sets = [{**s.__dict__, "change": s.change} for s in result.sets]
    return {
        "at": result.at,
        "sets": sets,
        "alerts": result.changes,
        "notes": result.notes,
        "state": str(result.state_path),
    }


def register(app: typer.Typer) -> None:
    app.command("monitor")(monitor_cmd)
