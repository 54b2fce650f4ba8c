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
    build_config,
    parse_models,
    parse_thresholds,
)

# What only the command line needs to say (the fields say what each setting is).
CRITERION_SYNTAX = "As METRIC=NUMBER (repeatable or comma-separated)."
JUDGE_SYNTAX = "Giving it turns LLM-as-judge on."


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
        reward_judge: Annotated[
            str | None,
            typer.Option(
                "--judge",
                metavar="reward:RUN",
                help=f"{describe(JudgeSettings, 'reward_model')} Per question, judge_win_rate "
                "is 1 when the answer scores above the first model's.",
            ),
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
        if reward_judge is not None:
            if not reward_judge.startswith("reward:") or reward_judge == "reward:":
                raise ConfigError(
                    f"--judge: {reward_judge!r} is not reward:RUN (an LLM judge: --judge-url)"
                )
            overrides["judge"] = {"enabled": True, "reward_model": reward_judge}
        elif judge_url:
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
