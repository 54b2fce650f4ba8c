"""Settings of `slm export` / `slm merge` / `slm quant-eval`. Every default and threshold lives here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from slmkit.config import StrictModel, from_options
from slmkit.tools import default_threads

MergeDtype = Literal["float16", "bfloat16", "float32"]
GgufOuttype = Literal["f16", "bf16", "f32"]
TaskMetric = Literal["fact_recall", "exact_match", "rouge_l"]
ExportFormat = Literal["gguf", "onnx", "gptq", "awq"]
OnnxPrecision = Literal["fp32", "int8", "int4"]

# llama-quantize types slmkit offers. The first four are the usual choices; the rest are
# "lower on request" (they break small models quickly; IQ2/IQ1 need an importance matrix and are not offered).
STANDARD_QUANTS = ("q8_0", "q6_k", "q5_k_m", "q4_k_m")
LOW_QUANTS = (
    "q5_k_s",
    "q5_0",
    "q4_k_s",
    "q4_0",
    "iq4_nl",
    "iq4_xs",
    "q3_k_l",
    "q3_k_m",
    "q3_k_s",
    "q2_k",
)
KNOWN_QUANTS = STANDARD_QUANTS + LOW_QUANTS
DEFAULT_QUANTS = ("q8_0", "q5_k_m", "q4_k_m")


class Thresholds(StrictModel):
    """When a quantization level counts as "within thresholds" (all must hold) and when f16 drift stops the export.

    The recommendation follows the measures that predict task quality: KL divergence, top-1
    agreement and perplexity ratio on held-out text always, and the task metric with its
    confidence interval when the eval prompts are an eval set (records with a `reference`).
    Temperature-0 answer agreement is reported as information: a small model's greedy answer
    takes another path after one flipped token, which says little about whether it got worse.
    """

    max_kld: float = Field(
        default=0.05,
        gt=0,
        description="Most mean KL divergence (nats/token) vs the f16 GGUF on held-out text.",
    )
    min_top1: float = Field(
        default=0.90,
        gt=0,
        le=1,
        description="Least share of tokens whose top-1 prediction equals the f16 GGUF's.",
    )
    max_ppl_ratio: float = Field(
        default=1.05, ge=1, description="Most perplexity ratio PPL(quant)/PPL(f16)."
    )
    max_task_drop: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="With an eval set as prompts: a level is out when the whole confidence interval of its "
        "task-metric change vs the f16 GGUF (same prompts, paired bootstrap) lies below -max_task_drop, "
        "i.e. the drop is real, not noise.",
    )
    task_confidence: float = Field(
        default=0.95, gt=0.5, lt=1, description="Confidence level of the task-metric interval."
    )
    max_different: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Most share of eval prompts whose temperature-0 answer is 'different' from the f16 GGUF's. "
        "Unset (default): answer agreement is information only; set it when identical greedy answers matter.",
    )
    similar_rouge_l: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="An answer that is not identical is 'similar' when its ROUGE-L F1 (word LCS) with the reference is at least this.",
    )
    parity_max_different: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="Parity gate: most share of eval prompts where the f16 GGUF answer is 'different' from base+adapter "
        "in PyTorch. f16 rounding alone moves a few greedy answers; more means a template, tokenizer or merge bug.",
    )
    merge_atol: float = Field(
        default=1e-3,
        gt=0,
        description="Merge check: largest allowed |logit| difference between merged and base+adapter (fp32).",
    )


class ExportConfig(StrictModel):
    """What `slm export` does: merge -> convert -> quantize -> quant eval -> recommendation."""

    merge_dtype: MergeDtype = Field(
        default="float16", description="Precision of the merged HF weights."
    )
    outtype: GgufOuttype = Field(
        default="f16", description="Precision of the reference GGUF that quantization starts from."
    )
    format: ExportFormat = Field(
        default="gguf",
        description="`gguf` (llama.cpp: convert + llama-quantize), `onnx` (ONNX Runtime GenAI "
        "folders), or `gptq` / `awq` (INT4 compressed-tensors folders for vLLM, by llm-compressor).",
    )
    quants: list[str] = Field(
        default_factory=lambda: list(DEFAULT_QUANTS),
        description="llama-quantize levels to produce.",
    )
    precisions: list[OnnxPrecision] | None = Field(
        default=None,
        description="ONNX precisions to produce with format onnx (fp32; int8 and int4 = the model "
        "builder's weight-only quantization; default int8).",
    )
    heldout: Path | None = Field(
        default=None,
        description="Held-out text for KL divergence / perplexity (default: examples/data/heldout.txt, else a built-in text).",
    )
    prompts: Path | None = Field(
        default=None,
        description="Eval prompts (JSONL: `prompt` or `messages` per line; default: the run's eval set, else built-in "
        "prompts). An eval set (records with `reference`) also scores each level with `task_metric`.",
    )
    max_prompts: int = Field(
        default=12,
        ge=1,
        description="Most eval prompts used for answer agreement and the parity gate.",
    )
    max_tokens: int = Field(default=64, ge=8, description="Most tokens per temperature-0 answer.")
    ppl_ctx: int = Field(
        default=256, ge=32, description="llama-perplexity context (tokens per chunk)."
    )
    ppl_chunks: int = Field(
        default=8,
        ge=1,
        description="Most chunks of held-out text to score (each `ppl_ctx` tokens).",
    )
    threads: int = Field(
        default_factory=default_threads,
        ge=1,
        description="CPU threads for llama.cpp tools (default: `SLM_THREADS` when set, else all cores on "
        "an idle machine, all but one "
        "when the load average says other work runs; llama.cpp's spinning worker threads slow down "
        "sharply when they compete for every core).",
    )
    force: bool = Field(default=False, description="Go on when the parity gate finds drift at f16.")
    skip_eval: bool = Field(
        default=False,
        description="Only merge, convert and quantize (no quant eval, no parity gate).",
    )
    task_metric: TaskMetric = Field(
        default="fact_recall",
        description="Task metric compared per level when the prompts are an eval set (fact_recall falls "
        "back to rouge_l when no record has must_include facts).",
    )
    thresholds: Thresholds = Field(default_factory=Thresholds, description="Quality thresholds.")

    @field_validator("quants", mode="before")
    @classmethod
    def _split_quants(cls, value: object) -> object:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            return [str(v).strip().lower() for v in value]
        return value

    @field_validator("quants")
    @classmethod
    def _known_quants(cls, value: list[str], info: ValidationInfo) -> list[str]:
        # only a value other than the default is a mistake for format onnx: a recipe written
        # back out and read again carries the defaults of both formats
        if info.data.get("format", "gguf") != "gguf" and value != list(DEFAULT_QUANTS):
            raise ValueError(
                "llama.cpp levels apply to format gguf; for ONNX give precisions, GPTQ/AWQ are INT4"
            )
        for name in value:
            if name not in KNOWN_QUANTS:
                raise ValueError(
                    f"unknown quantization {name!r}; choose from {', '.join(KNOWN_QUANTS)}"
                )
        return list(dict.fromkeys(value))

    @field_validator("precisions", mode="before")
    @classmethod
    def _split_precisions(cls, value: object) -> object:
        if isinstance(value, str):
            value = [v.strip().lower() for v in value.split(",") if v.strip()]
        return list(dict.fromkeys(value)) if isinstance(value, list) else value

    @field_validator("precisions")
    @classmethod
    def _some_precision(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is not None and info.data.get("format") != "onnx":
            raise ValueError("ONNX precisions apply to format onnx (`--format onnx`)")
        if value is not None and not value:
            raise ValueError("give at least one of fp32, int8, int4")
        return value

    @property
    def onnx_precisions(self) -> list[str]:
        """The ONNX precisions to build: those given, else int8."""
        return list(self.precisions or ["int8"])


class ExportSection(ExportConfig):
    """The pipeline recipe's `export:` section: `slm export` settings plus an on/off switch."""

    enabled: bool = Field(
        default=True, description="Merge, convert, quantize and quant-eval the final model."
    )

    def to_export_config(self) -> ExportConfig:
        return ExportConfig(**self.model_dump(exclude={"enabled"}, exclude_unset=True))


def export_config(**values: Any) -> ExportConfig:
    """An `ExportConfig` from CLI values; a bad value is one ConfigError line naming the option."""
    thresholds = {k: v for k, v in values.items() if k in Thresholds.model_fields and v is not None}
    settings = {k: v for k, v in values.items() if k in ExportConfig.model_fields and v is not None}
    return from_options(ExportConfig, {**settings, "thresholds": thresholds})
