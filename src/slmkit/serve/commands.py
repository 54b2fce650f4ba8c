"""CLI: `slm serve` and `slm bench serve` (`slm logs` is in `logs_commands.py`). Thin: parse, call
the stage, print."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, get_args

import typer

from slmkit.config import from_options, option
from slmkit.console import console, out, result_line
from slmkit.errors import ConfigError
from slmkit.monitor.serve_section import MonitoredServeConfig
from slmkit.serve.bench import BenchConfig
from slmkit.serve.config import ServeConfig
from slmkit.serve.model_config import EngineName


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
    from slmkit.monitor.scheduled import ScheduledMonitor
    from slmkit.serve.server import model_entry, serve

    cfg = load_serve_config(config, list(set_ or []))
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
    monitor = ScheduledMonitor.from_serve(cfg)  # a bad set or baseline stops the start here
    serve(cfg, companions=[monitor] if monitor is not None else [])


def load_serve_config(path: Path | None, overrides: list[str]) -> MonitoredServeConfig:
    """serve.yaml (or only `--set` overrides) with its `monitor:` section."""
    from pydantic import ValidationError

    from slmkit.config import apply_overrides, dotted, format_validation_error, load_config

    if path is not None:
        return load_config(path, MonitoredServeConfig, overrides)
    try:
        return MonitoredServeConfig.model_validate(apply_overrides({}, overrides))
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, name=lambda loc: f"--set {dotted(loc)}")
        ) from exc


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
        result_line(json.dumps(report.to_dict(), indent=2))
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
    from slmkit.serve import logs_commands

    app.command("serve")(serve_cmd)
    logs_commands.register(app)
    bench = typer.Typer(help="Benchmarks against running services.", no_args_is_help=True)
    bench.command("serve")(bench_serve_cmd)
    app.add_typer(bench, name="bench")
