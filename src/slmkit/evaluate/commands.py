"""`slm eval`: compare models on one eval set; prints a summary table and writes the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from slmkit.errors import ConfigError


def parse_models(text: str) -> list[dict[str, str]]:
    """`base=default,tuned=runs/demo` -> [{name, ref}, ...]; a bare ref is named after itself."""
    specs = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, ref = part.partition("=")
        if not sep:
            ref, name = part, Path(part.rstrip("/")).stem or part
        if not name.strip() or not ref.strip():
            raise ConfigError(f"--models {part!r}: expected NAME=REF (e.g. tuned=runs/demo)")
        specs.append({"name": name.strip(), "ref": ref.strip()})
    if not specs:
        raise ConfigError("--models: give at least one model, e.g. base=default,tuned=runs/demo")
    return specs


def parse_thresholds(values: list[str], option: str) -> dict[str, float]:
    """`fact_recall=0.3` (repeatable or comma-separated) -> {"fact_recall": 0.3}."""
    out: dict[str, float] = {}
    for text in (p.strip() for v in values for p in v.split(",")):
        if not text:
            continue
        metric, sep, raw = text.partition("=")
        try:
            out[metric.strip()] = float(raw)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"{option} {text!r}: expected METRIC=NUMBER (e.g. fact_recall=0.3)")
    return out


def build_config(
    config_file: Path | None, overrides: dict[str, Any], criteria: dict[str, Any]
) -> Any:
    from pydantic import ValidationError

    from slmkit.config import format_validation_error, read_yaml
    from slmkit.evaluate.config import EvalConfig

    data: dict[str, Any] = {}
    lines: dict[tuple[Any, ...], int] = {}
    source = "command line"
    if config_file is not None:
        data, lines = read_yaml(config_file)
        source = str(config_file)
    data.update({k: v for k, v in overrides.items() if v is not None})
    data["criteria"] = {**data.get("criteria", {}), **{k: v for k, v in criteria.items() if v}}
    if "models" not in data or "data" not in data:
        raise ConfigError("slm eval needs --models and --data (or a --config file that sets them)")
    try:
        return EvalConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, lines)) from exc


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        models: Annotated[
            str | None,
            typer.Option(
                "--models",
                "-m",
                help="NAME=REF,... ; the first is the baseline (e.g. base=default,tuned=runs/demo,q8=exports/demo/model-q8_0.gguf).",
            ),
        ] = None,
        data: Annotated[
            Path | None,
            typer.Option(
                "--data",
                "-d",
                help="Eval set (JSONL: prompt or messages, reference, must_include, tags).",
            ),
        ] = None,
        out_dir: Annotated[
            Path | None, typer.Option("--out", "-o", help="Report folder (default reports/eval).")
        ] = None,
        max_tokens: Annotated[
            int | None, typer.Option(min=1, help="Most new tokens per answer (default 128).")
        ] = None,
        limit: Annotated[
            int | None, typer.Option(min=1, help="Evaluate only the first N questions.")
        ] = None,
        concurrency: Annotated[
            int | None, typer.Option(min=1, help="Requests in flight per model (default 4).")
        ] = None,
        engine: Annotated[
            str | None, typer.Option(help="auto (as `slm serve`), llamacpp or transformers.")
        ] = None,
        min_gain: Annotated[
            list[str] | None,
            typer.Option(
                "--min-gain", help="METRIC=GAIN over the first model, e.g. fact_recall=0.3."
            ),
        ] = None,
        min_value: Annotated[
            list[str] | None, typer.Option("--min", help="METRIC=FLOOR, e.g. fact_recall=0.8.")
        ] = None,
        max_value: Annotated[
            list[str] | None, typer.Option("--max", help="METRIC=CEILING, e.g. latency_p95_s=5.")
        ] = None,
        max_kld: Annotated[
            float | None,
            typer.Option(help="Largest KLD of a quantized export vs f16 (from its quant eval)."),
        ] = None,
        strict: Annotated[
            bool, typer.Option("--strict", help="Exit 1 when a criterion fails.")
        ] = False,
        no_cache: Annotated[
            bool, typer.Option("--no-cache", help="Generate again even when cached.")
        ] = False,
        no_similarity: Annotated[
            bool, typer.Option("--no-similarity", help="Skip the MiniLM embedding similarity.")
        ] = False,
        judge_url: Annotated[
            str | None,
            typer.Option(help="Turn on LLM-as-judge: OpenAI-compatible base URL of the judge."),
        ] = None,
        judge_model: Annotated[
            str | None, typer.Option(help="Judge model id (with --judge-url).")
        ] = None,
        config: Annotated[
            Path | None,
            typer.Option("--config", help="YAML with any of these settings (flags win)."),
        ] = None,
    ) -> None:
        """Evaluate models side by side (temperature 0, the serving engines) and write report.json + report.html."""
        from slmkit.console import out
        from slmkit.evaluate.run import run_eval
        from slmkit.evaluate.summary import print_summary

        overrides: dict[str, Any] = {
            "models": parse_models(models) if models else None,
            "data": str(data) if data else None,
            "out_dir": str(out_dir) if out_dir else None,
            "max_tokens": max_tokens,
            "concurrency": concurrency,
            "limit": limit,
            "engine": engine,
            "strict": strict or None,
            "cache": False if no_cache else None,
            "similarity": False if no_similarity else None,
        }
        if judge_url:
            overrides["judge"] = {
                "enabled": True,
                "base_url": judge_url,
                **({"model": judge_model} if judge_model else {}),
            }
        criteria = {
            "min_gain": parse_thresholds(min_gain or [], "--min-gain"),
            "min": parse_thresholds(min_value or [], "--min"),
            "max": parse_thresholds(max_value or [], "--max"),
            "max_kld": max_kld,
        }
        cfg = build_config(config, overrides, criteria)
        result = run_eval(cfg)
        print_summary(result)
        out.print(f"report: {result.report_html}  (data: {result.report_json})")
        if cfg.strict and not result.passed:
            # SystemExit, not typer.Exit: with standalone_mode=False click turns typer.Exit into a return value
            raise SystemExit(1)
