"""`slm eval`: compare models on one eval set; prints a summary table and writes the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from slmkit.config import describe, option
from slmkit.errors import ConfigError
from slmkit.evaluate.config import (
    Criteria,
    EvalConfig,
    JudgeSettings,
    RetrievalEvalConfig,
    RetrievalSettings,
)

# What only the command line needs to say (the fields say what each setting is).
CRITERION_SYNTAX = "As METRIC=NUMBER (repeatable or comma-separated)."
JUDGE_SYNTAX = "Giving it turns LLM-as-judge on."


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

    data: dict[str, Any] = {}
    lines: dict[tuple[Any, ...], int] = {}
    source = "command line"
    if config_file is not None:
        data, lines = read_yaml(config_file)
        source = str(config_file)
    if overrides.get("retrieval") and isinstance(data.get("retrieval"), dict):
        overrides = {**overrides, "retrieval": {**data["retrieval"], **overrides["retrieval"]}}
    data.update({k: v for k, v in overrides.items() if v is not None})
    data["criteria"] = {**data.get("criteria", {}), **{k: v for k, v in criteria.items() if v}}
    retrieval_only = "models" not in data and "data" not in data and "retrieval" in data
    if not retrieval_only and ("models" not in data or "data" not in data):
        raise ConfigError(
            "slm eval needs --models and --data, or --retrieval and --index (or a --config file that sets them)"
        )
    try:
        if retrieval_only:
            keep = {k: data[k] for k in ("retrieval", "out_dir") if k in data}
            return RetrievalEvalConfig.model_validate(keep)
        return EvalConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, lines)) from exc


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        models: str | None = option(
            EvalConfig,
            "models",
            "--models",
            "-m",
            from_config=True,
            extra_help="As NAME=REF,... (e.g. base=default,tuned=runs/demo,q8=exports/demo/model-q8_0.gguf).",
        ),
        data: Path | None = option(
            EvalConfig,
            "data",
            "--data",
            "-d",
            from_config=True,
            extra_help="Records: prompt or messages, reference, must_include, tags.",
        ),
        out_dir: Path | None = option(EvalConfig, "out_dir", "--out", "-o", from_config=True),
        max_tokens: int | None = option(EvalConfig, "max_tokens", min=1, from_config=True),
        limit: int | None = option(EvalConfig, "limit", min=1, from_config=True),
        concurrency: int | None = option(EvalConfig, "concurrency", min=1, from_config=True),
        engine: str | None = option(EvalConfig, "engine", from_config=True),
        min_gain: list[str] | None = option(
            Criteria, "min_gain", "--min-gain", from_config=True, extra_help=CRITERION_SYNTAX
        ),
        min_value: list[str] | None = option(
            Criteria, "min", "--min", from_config=True, extra_help=CRITERION_SYNTAX
        ),
        max_value: list[str] | None = option(
            Criteria, "max", "--max", from_config=True, extra_help=CRITERION_SYNTAX
        ),
        max_kld: float | None = option(Criteria, "max_kld", from_config=True),
        strict: bool | None = option(EvalConfig, "strict", "--strict", from_config=True),
        cache: bool | None = option(EvalConfig, "cache", "--cache/--no-cache", from_config=True),
        similarity: bool | None = option(
            EvalConfig, "similarity", "--similarity/--no-similarity", from_config=True
        ),
        judge_url: Annotated[
            str | None,
            typer.Option(help=f"{describe(JudgeSettings, 'base_url')} {JUDGE_SYNTAX}"),
        ] = None,
        judge_model: str | None = option(
            JudgeSettings,
            "model",
            "--judge-model",
            from_config=True,
            extra_help="(With --judge-url.)",
        ),
        retrieval: Path | None = option(
            RetrievalSettings,
            "questions",
            "--retrieval",
            from_config=True,
            extra_help="Measures recall@k and MRR of --index, dense vs BM25 (with or without --models).",
        ),
        index: Path | None = option(RetrievalSettings, "index", "--index", from_config=True),
        config: Annotated[
            Path | None,
            typer.Option("--config", help="YAML with any of these settings (flags win)."),
        ] = None,
    ) -> None:
        """Evaluate models side by side (temperature 0, the serving engines) and write report.json + report.html."""
        from slmkit.console import result_line
        from slmkit.evaluate.run import run_eval
        from slmkit.evaluate.summary import print_retrieval, print_summary

        overrides: dict[str, Any] = {
            "models": parse_models(models) if models else None,
            "data": str(data) if data else None,
            "out_dir": str(out_dir) if out_dir else None,
            "max_tokens": max_tokens,
            "concurrency": concurrency,
            "limit": limit,
            "engine": engine,
            "strict": strict,
            "cache": cache,
            "similarity": similarity,
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
        if (retrieval is None) != (index is None):
            raise ConfigError("--retrieval QUESTIONS and --index INDEX go together")
        if retrieval is not None:
            overrides["retrieval"] = {"questions": str(retrieval), "index": str(index)}
        cfg = build_config(config, overrides, criteria)
        if isinstance(cfg, RetrievalEvalConfig):
            from slmkit.evaluate.retrieval import run_retrieval_eval

            report = run_retrieval_eval(cfg)
            print_retrieval(report.result)
            result_line(f"report: {report.report_html}  (data: {report.report_json})")
            return
        result = run_eval(cfg)
        print_summary(result)
        result_line(f"report: {result.report_html}  (data: {result.report_json})")
        if cfg.strict and not result.passed:
            # SystemExit, not typer.Exit: with standalone_mode=False click turns typer.Exit into a return value
            raise SystemExit(1)
