"""Settings of `slm eval` and of the pipeline's `evaluate:` section. Every default lives here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from slmkit.config import StrictModel
from slmkit.errors import ConfigError

# Per-model metrics a criterion can name (all are means over the eval set, except the latency ones).
QUALITY_METRICS = (
    "fact_recall",
    "exact_match",
    "rouge_l",
    "similarity",
    "judge_win_rate",
    "json_valid",
)
ALL_METRICS = (
    *QUALITY_METRICS,
    "forbidden_rate",
    "length_words",
    "latency_p50_s",
    "latency_p95_s",
    "tokens_per_s",
)
EngineChoice = Literal["auto", "llamacpp", "transformers", "onnx"]
MainMetric = Literal["fact_recall", "exact_match", "rouge_l", "similarity", "json_valid"]


def _check_metric_names(values: dict[str, float]) -> dict[str, float]:
    for name in values:
        if name not in ALL_METRICS:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(ALL_METRICS)}")
    return values


class ModelSpec(StrictModel):
    """One model in the comparison: a short name for tables and a model reference."""

    name: str = Field(description="Name shown in the report (e.g. base, tuned, q8).")
    ref: str = Field(
        description="Model reference: default, a run folder, a .gguf, an HF folder, an ONNX export folder."
    )
    engine: EngineChoice = Field(
        default="auto",
        description="Engine that generates: auto = what `slm serve` picks (llama.cpp for GGUF, onnx for an "
        "ONNX export folder, transformers otherwise).",
    )


class Criteria(StrictModel):
    """What success means; each criterion becomes a PASS/FAIL row at the end of the report."""

    min_gain: dict[str, float] = Field(
        default_factory=dict,
        description="metric -> least absolute gain over the first model (e.g. fact_recall: 0.3 = +30 points).",
    )
    min: dict[str, float] = Field(
        default_factory=dict, description="metric -> least value (e.g. fact_recall: 0.8)."
    )
    max: dict[str, float] = Field(
        default_factory=dict, description="metric -> largest value (e.g. latency_p95_s: 5)."
    )
    max_kld: float | None = Field(
        default=None,
        gt=0,
        description="Largest mean KL divergence of a quantized GGUF vs f16, read from its export's quant eval.",
    )
    apply_to: list[str] | None = Field(
        default=None,
        description="Model names the criteria apply to; default: every model but the first.",
    )

    @field_validator("min_gain", "min", "max")
    @classmethod
    def _known_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_metric_names(value)

    def is_empty(self) -> bool:
        return not (self.min_gain or self.min or self.max or self.max_kld is not None)


class JudgeSettings(StrictModel):
    """Optional LLM-as-judge: pairwise comparison with the first model through an OpenAI-compatible API."""

    enabled: bool = Field(
        default=False, description="Ask a judge model which answer is better (off by default)."
    )
    reward_model: str | None = Field(
        default=None,
        description="A reward model (`reward:RUN`, a run of `slm train` with method: reward) "
        "judges instead of an LLM: the answer with the higher reward wins.",
    )
    base_url: str = Field(
        default="http://127.0.0.1:8000/v1", description="OpenAI-compatible endpoint of the judge."
    )
    model: str = Field(default="default", description="Judge model id at that endpoint.")
    api_key_env: str = Field(
        default="OPENAI_API_KEY",
        description="Environment variable holding the judge's API key (may be unset).",
    )
    max_tokens: int = Field(default=64, ge=8, description="Most tokens of each verdict.")
    timeout_s: float = Field(default=60.0, gt=0, description="Seconds per judge request.")


class EvalSettings(StrictModel):
    """How to evaluate (reusable as the pipeline recipe's `evaluate:` section)."""

    max_tokens: int = Field(default=128, ge=1, description="Most new tokens per answer.")
    limit: int | None = Field(
        default=None, ge=1, description="Evaluate only the first N questions (quick checks)."
    )
    concurrency: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Requests in flight per model (the engine batches them).",
    )
    engine: EngineChoice = Field(
        default="auto", description="Default engine for models that say `auto`."
    )
    main_metric: MainMetric = Field(
        default="fact_recall",
        description="Metric with the bootstrap confidence interval and the bar order.",
    )
    bootstrap_samples: int = Field(
        default=1000, ge=100, description="Bootstrap resamples for the CI."
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="Confidence level of the CI.")
    similarity: bool = Field(
        default=True,
        description="Compute embedding similarity to the reference (all-MiniLM-L6-v2).",
    )
    cache: bool = Field(
        default=True, description="Reuse cached generations (same model, prompt, settings)."
    )
    seed: int = Field(
        default=0, description="Seed sent with every request and used by the bootstrap."
    )
    judge: JudgeSettings = Field(default_factory=JudgeSettings, description="LLM-as-judge.")
    criteria: Criteria = Field(default_factory=Criteria, description="PASS/FAIL criteria.")
    strict: bool = Field(default=False, description="Exit non-zero when a criterion fails.")


class RetrievalSettings(StrictModel):
    """Retrieval metrics of an `slm index` folder on a question -> passage set, dense vs BM25."""

    questions: Path = Field(
        description="Question set (JSONL: question, source file, a phrase its passage contains)."
    )
    index: Path = Field(description="Index folder written by `slm index`.")
    k: list[int] = Field(
        default_factory=lambda: [1, 4],
        min_length=1,
        description="Cut-offs of recall@k (a question counts when a hit is in the top k).",
    )
    depth: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Passages retrieved per question; MRR counts ranks up to it.",
    )

    @field_validator("k")
    @classmethod
    def _sorted_k(cls, value: list[int]) -> list[int]:
        return sorted(set(value))

    @model_validator(mode="after")
    def _k_within_depth(self) -> RetrievalSettings:
        if self.k[0] < 1 or self.k[-1] > self.depth:
            raise ValueError(f"every k must be between 1 and depth ({self.depth})")
        return self


class RetrievalEvalConfig(StrictModel):
    """`slm eval --retrieval QSET --index INDEX` without models: a retrieval-only report."""

    retrieval: RetrievalSettings = Field(description="Retrieval metrics to measure.")
    out_dir: Path = Field(
        default=Path("reports/eval"), description="Folder for report.json and report.html."
    )


class EvalConfig(EvalSettings):
    """Everything `slm eval` needs."""

    models: list[ModelSpec] = Field(
        min_length=1, description="Models compared; the first is the baseline."
    )
    data: Path = Field(description="Eval set (JSONL).")
    out_dir: Path = Field(
        default=Path("reports/eval"), description="Folder for report.json and report.html."
    )
    retrieval: RetrievalSettings | None = Field(
        default=None,
        description="Also measure retrieval (recall@k, MRR) of an index, dense vs BM25.",
    )

    @model_validator(mode="after")
    def _check_names(self) -> EvalConfig:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model names: {', '.join(dupes)}")
        unknown = [n for n in self.criteria.apply_to or [] if n not in names]
        if unknown:
            raise ValueError(f"criteria.apply_to names unknown models: {', '.join(unknown)}")
        return self


class EvalSection(EvalSettings):
    """The pipeline recipe's `evaluate:` section: how `slm run` compares base, tuned and each export."""

    data: Path | None = Field(
        default=None,
        description="Eval set (JSONL, relative to the recipe); without it `slm run` skips evaluation.",
    )
    base_engine: EngineChoice = Field(
        default="transformers",
        description="Engine for the base model. transformers runs the same fp32 weights the adapter was trained on "
        "(like for like with `tuned`); auto serves the embedded model's Q4_1 GGUF with llama.cpp (faster).",
    )
    include_reference_gguf: bool = Field(
        default=False, description="Also evaluate the unquantized (f16) GGUF of the export."
    )


# What `slm eval` and the board's Evaluate tab give as text, as settings
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
