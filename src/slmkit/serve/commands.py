"""CLI: `slm serve`, `slm logs`, `slm bench serve`. Thin: parse, call the stage, print."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Annotated, get_args

import typer

from slmkit.config import from_options, option
from slmkit.console import console, out
from slmkit.errors import ConfigError
from slmkit.serve.bench import BenchConfig
from slmkit.serve.config import EngineName, ServeConfig


def serve_cmd(
    refs: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[REF]...", help="Models to serve: default, a .gguf, an export or run folder."
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="NAME=REF: serve REF under the id NAME."),
    ] = None,
    engine: str | None = option(
        ServeConfig, "engine", from_config=True, extra_help=" | ".join(get_args(EngineName)) + "."
    ),
    host: str | None = option(ServeConfig, "host", from_config=True),
    port: int | None = option(ServeConfig, "port", from_config=True),
    api_key: list[str] | None = option(
        ServeConfig,
        "api_keys",
        "--api-key",
        from_config=True,
        extra_help="Repeatable; adds to the file's.",
    ),
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="serve.yaml with keys, limits, guards, audit."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value: --set limits.max_queue=32"),
    ] = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the resolved config and exit.")
    ] = False,
) -> None:
    """Serve models behind an OpenAI-compatible API (chat, completions, models, metrics)."""
    from slmkit.config import dump_config
    from slmkit.serve.server import model_entry, serve

    cfg = _load_config(config, list(set_ or []))
    entries = [model_entry(text) for text in [*(refs or []), *(model or [])]]
    if entries:
        known = {e.id for e in entries}
        cfg.models = [m for m in cfg.models if m.id not in known] + entries
    if engine is not None:
        cfg.engine = engine  # type: ignore[assignment]
    if host is not None:
        cfg.host = host
    if port is not None:
        cfg.port = port
    if api_key:
        cfg.api_keys = [*cfg.api_keys, *api_key]
    if print_config:
        out.print(dump_config(cfg), end="", markup=False)
        return
    serve(cfg)


def _load_config(path: Path | None, overrides: list[str]) -> ServeConfig:
    from pydantic import ValidationError

    from slmkit.config import apply_overrides, dotted, format_validation_error, load_config

    if path is not None:
        return load_config(path, ServeConfig, overrides)
    try:
        return ServeConfig.model_validate(apply_overrides({}, overrides))
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, name=lambda loc: f"--set {dotted(loc)}")
        ) from exc


def _audit_db(db: Path | None, config: Path | None) -> Path:
    if db is not None:
        return db
    return _load_config(config, []).audit.db_path()


def logs_cmd(
    db: Annotated[
        Path | None,
        typer.Option(
            help="Audit SQLite file (default: from --config or $SLM_HOME/serve/audit.db)."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="serve.yaml (audit path and alert rules).")
    ] = None,
    window: Annotated[
        str,
        typer.Option(help="Statistics window: seconds, or with a unit (90s, 5m, 1h, 7d)."),
    ] = "300",
    last: Annotated[int, typer.Option(help="Recent requests to list.")] = 10,
    feedback: Annotated[
        bool, typer.Option("--feedback", help="List recent feedback instead.")
    ] = False,
    keys: Annotated[
        bool,
        typer.Option("--keys", help="Requests, 429s and tokens per API key name over the window."),
    ] = False,
    routes: Annotated[
        bool,
        typer.Option(
            "--routes",
            help="Per route over the window: requests, local share (answered by the chain's "
            "first member), rule hits, escalations and fallbacks by reason.",
        ),
    ] = False,
    ab: Annotated[
        str | None,
        typer.Option(
            "--ab",
            metavar="MODEL",
            help="Compare the versions of an A/B split model: requests, errors, latency, feedback "
            "rate, thumbs-up share (95% CI), escalation rate, and whether the difference is "
            "significant.",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="With --ab: start at a date (2026-11-27), an ISO time (UTC unless it says) or a "
            "duration back from now (7d, 12h). Default: all."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print statistics as JSON.")] = False,
) -> None:
    """Recent requests, p50/p95/p99 latency, error rate and tokens/s from the audit log; alerts."""
    from rich.table import Table

    from slmkit.serve.logs import (
        check_alerts,
        feedback_rows,
        parse_window,
        recent_requests,
        window_stats,
    )

    path = _audit_db(db, config)
    window_s = parse_window(window)
    if ab is not None:
        _print_ab_report(path, ab, since, config, as_json)
        return
    if since is not None:
        raise ConfigError("--since: it applies to --ab MODEL (the other views use --window)")
    if keys:
        _print_key_stats(path, window_s, as_json)
        return
    if routes:
        chains = {r.id: r.chain for r in _load_config(config, []).routes}
        _print_route_stats(path, window_s, chains, as_json)
        return
    if feedback:
        table = Table("time", "request", "model", "rating", "correction")
        for row in feedback_rows(path, last):
            table.add_row(
                _time(row["ts"]),
                row["request_id"],
                row["model"] or "-",
                f"{row['rating']:+d}",
                (row["correction"] or "")[:60],
            )
        out.print(table)
        return
    stats = window_stats(path, window_s)
    alerts = check_alerts(path, _load_config(config, []).alerts)
    if as_json:
        data = {
            **stats.__dict__,
            "error_rate": stats.error_rate,
            "alerts": [a.__dict__ for a in alerts],
        }
        out.print(json.dumps(data, indent=2), markup=False, emoji=False, soft_wrap=True)
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


def _print_key_stats(path: Path, window: float, as_json: bool) -> None:
    from rich.table import Table

    from slmkit.serve.logs import key_stats

    stats = key_stats(path, window)
    if as_json:
        data = [{**s.__dict__, "tokens": s.tokens} for s in stats]
        out.print(json.dumps(data, indent=2), markup=False, emoji=False, soft_wrap=True)
        return
    table = Table("key", "requests", "429s", "prompt tokens", "completion tokens", "tokens")
    for s in stats:
        counts = (s.requests, s.rejected, s.prompt_tokens, s.completion_tokens, s.tokens)
        table.add_row(s.key, *(str(n) for n in counts))
    out.print(table)
    out.print(f"last {window:g} s, {len(stats)} keys")


def _print_route_stats(
    path: Path, window: float, chains: dict[str, list[str]], as_json: bool
) -> None:
    from rich.table import Table

    from slmkit.serve.logs import route_stats

    stats = route_stats(path, window, chains=chains)
    if as_json:
        data = [{**s.__dict__, "local_share": s.local_share} for s in stats]
        out.print(json.dumps(data, indent=2), markup=False, emoji=False, soft_wrap=True)
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
    path: Path, model: str, since: str | None, config: Path | None, as_json: bool
) -> None:
    from rich.table import Table

    from slmkit.serve.ab_report import ab_report
    from slmkit.serve.logs import parse_time

    entry = next((m for m in _load_config(config, []).models if m.id == model), None)
    order = [arm.version for arm in entry.ab or []] if entry is not None else []
    start = parse_time(since, "--since") if since is not None else None
    report = ab_report(path, model, start, order)
    if as_json:
        text = json.dumps(report.as_dict(), indent=2)
        out.print(text, markup=False, emoji=False, soft_wrap=True)
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


def bench_serve_cmd(
    url: str = option(BenchConfig, "url", "--url"),
    model: str = option(BenchConfig, "model", "--model"),
    concurrency: int = option(BenchConfig, "concurrency", "--concurrency", "-n"),
    requests: int = option(BenchConfig, "requests", "--requests"),
    max_tokens: int = option(BenchConfig, "max_tokens", "--max-tokens"),
    prompts: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Text file, one prompt per line (default: built-in set).",
        ),
    ] = None,
    api_key: str | None = option(BenchConfig, "api_key", "--api-key"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Drive a running server with N concurrent streaming clients: TTFT, TPOT, ITL, tokens/s, errors."""
    from rich.table import Table

    from slmkit.serve.bench import run_bench

    counts = {"concurrency": concurrency, "requests": requests, "max_tokens": max_tokens}
    config = from_options(BenchConfig, {"url": url, "model": model, "api_key": api_key, **counts})
    prompt_list = [ln for ln in prompts.read_text().splitlines() if ln.strip()] if prompts else None
    report = asyncio.run(
        run_bench(
            config.url,
            config.model,
            prompts=prompt_list,
            **config.model_dump(exclude={"url", "model"}),
        )
    )
    if as_json:
        out.print(json.dumps(report.to_dict(), indent=2), markup=False, emoji=False, soft_wrap=True)
        return
    table = Table("metric", "p50", "p95", "p99")
    for name, values in (
        ("TTFT", report.ttft_ms),
        ("TPOT", report.tpot_ms),
        ("ITL", report.itl_ms),
        ("end-to-end", report.e2e_ms),
    ):
        table.add_row(f"{name} (ms)", *(str(values[q]) for q in ("p50", "p95", "p99")))
    out.print(table)
    out.print(
        f"{report.requests} requests ({report.concurrency} concurrent), {report.errors} errors, "
        f"{report.output_tokens} output tokens in {report.duration_s:.2f} s: {report.tokens_per_s:.1f} tok/s"
    )
    if report.first_error:
        console.print(f"[red]first error:[/red] {report.first_error}")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
    app.command("logs")(logs_cmd)
    bench = typer.Typer(help="Benchmarks against running services.", no_args_is_help=True)
    bench.command("serve")(bench_serve_cmd)
    app.add_typer(bench, name="bench")
