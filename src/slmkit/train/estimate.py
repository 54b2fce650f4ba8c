"""`slm estimate`: memory needed to train (LoRA / QLoRA / full) and to run a model, per precision.

Counts come from the model's config on the meta device (no weights are loaded). Activation memory
uses a per-token, per-layer count of the tensors a Llama-style block keeps for the backward pass,
plus the logits (which dominate for small models with large vocabularies), plus the framework's
own resident memory; the slow test checks the total against measured peak RSS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, ValidationError

from slmkit.config import StrictModel, format_validation_error, option_flag
from slmkit.errors import ConfigError, SlmError
from slmkit.models.shapes import SHAPES

GIB = 1024**3
BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "nf4": 0.5 + 0.5 / 64 * 4 / 2}
FRAMEWORK_OVERHEAD = {
    "cpu": 0.55 * GIB,
    "cuda": 0.45 * GIB,
}  # torch + transformers resident set / CUDA context
LOGIT_COPIES = 3.0  # logits, their float32 log-softmax, and the gradient of the logits


@dataclass
class ModelShape:
    params: int
    linear_params: int
    lora_params_per_rank: int
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int


@dataclass
class MemoryEstimate:
    model: str
    method: str
    batch: int
    cutoff: int
    shape: ModelShape
    training: dict[str, dict[str, float]] = field(
        default_factory=dict
    )  # precision -> part -> bytes
    inference: dict[str, dict[str, float]] = field(default_factory=dict)


def model_shape(model_ref: str) -> ModelShape:
    """Parameter counts of a model from its config (meta device: no memory, no download of weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from slmkit.models.resolve import resolve_model
    from slmkit.models.shapes import SHAPES, shape_config

    if model_ref.lower() in SHAPES:
        config = shape_config(model_ref)
    else:
        resolved = resolve_model(model_ref)
        try:
            config = AutoConfig.from_pretrained(resolved.hf_path)
        except OSError as exc:
            raise SlmError(
                f"--model {model_ref!r}: cannot read its config ({str(exc).splitlines()[0]})"
            ) from exc
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    linear = [
        m
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "lm_head" not in name
    ]
    get = lambda *names: next((getattr(config, n) for n in names if getattr(config, n, None)), 0)  # noqa: E731
    heads = get("num_attention_heads")
    return ModelShape(
        params=params,
        linear_params=sum(m.weight.numel() for m in linear),
        lora_params_per_rank=sum(m.in_features + m.out_features for m in linear),
        layers=get("num_hidden_layers", "n_layer"),
        hidden=get("hidden_size", "n_embd"),
        intermediate=get("intermediate_size") or 4 * get("hidden_size"),
        vocab=get("vocab_size"),
        heads=heads,
        kv_heads=get("num_key_value_heads") or heads,
    )


def _activations(
    shape: ModelShape, tokens: int, seq: int, batch: int, width: float, checkpointing: bool
) -> float:
    """Bytes kept for backward: per layer ~10 hidden-sized and 5 intermediate-sized tensors per token,
    attention probabilities (math kernel), and the logits."""
    per_token_layer = 10 * shape.hidden + 5 * shape.intermediate
    attention = batch * shape.heads * seq * seq * 2  # scores + probabilities
    layer_bytes = (tokens * per_token_layer + attention) * width
    stored = (
        shape.layers * tokens * shape.hidden * width + layer_bytes
        if checkpointing
        else shape.layers * layer_bytes
    )
    logits = tokens * shape.vocab * 4 * LOGIT_COPIES
    return stored + logits


def training_parts(
    shape: ModelShape,
    method: str,
    precision: str,
    batch: int,
    cutoff: int,
    lora_r: int,
    checkpointing: bool = False,
    device: str = "cpu",
) -> dict[str, float]:
    """Bytes per part for one training process."""
    weight_width = (
        BYTES["nf4"] if method == "qlora" else BYTES[precision if method != "full" else "fp32"]
    )
    trainable = shape.params if method == "full" else shape.lora_params_per_rank * lora_r
    frozen_linear = shape.linear_params if method == "qlora" else 0
    weights = (shape.params - frozen_linear) * (
        BYTES["bf16"] if method == "qlora" else weight_width
    )
    weights += frozen_linear * weight_width
    if method != "full":
        weights += trainable * 4
    tokens = batch * cutoff
    return {
        "weights": weights,
        "gradients": trainable * 4.0,
        "optimizer": trainable * 8.0
        + (trainable * 4.0 if method == "full" and precision != "fp32" else 0.0),
        "activations": _activations(
            shape,
            tokens,
            cutoff,
            batch,
            BYTES["fp32" if precision == "fp32" else "bf16"],
            checkpointing,
        ),
        "framework": FRAMEWORK_OVERHEAD[device],
    }


def inference_parts(
    shape: ModelShape, precision: str, cutoff: int, device: str = "cpu"
) -> dict[str, float]:
    head_dim = shape.hidden // max(shape.heads, 1)
    kv_cache = 2 * shape.layers * shape.kv_heads * head_dim * cutoff * BYTES.get(precision, 2.0)
    return {
        "weights": shape.params * BYTES[precision],
        "kv_cache": kv_cache,
        "activations": cutoff * shape.vocab * 4.0,
        "framework": FRAMEWORK_OVERHEAD[device],
    }


class EstimateConfig(StrictModel):
    """What `slm estimate` (and the board's Train tab) sizes."""

    model: str = Field(
        default="default",
        description="Model reference (default, a folder, a hub id with config), or a published "
        "shape: " + ", ".join(SHAPES) + ".",
    )
    method: Literal["lora", "qlora", "full"] = Field(
        default="lora", description="lora | qlora | full"
    )
    batch: int = Field(default=8, ge=1, description="Batch size per device.")
    cutoff: int = Field(default=512, ge=1, description="Tokens per sample.")
    lora_r: int = Field(default=16, ge=1, description="LoRA rank.")
    gradient_checkpointing: bool = Field(
        default=False, description="Assume activation recomputation."
    )


def estimate_memory(model: str, **settings: Any) -> MemoryEstimate:
    """Training and inference memory of `model`; `settings` are EstimateConfig's other fields."""
    try:
        config = EstimateConfig(model=model, **settings)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, name=option_flag)) from exc
    method, batch, cutoff = config.method, config.batch, config.cutoff
    lora_r, gradient_checkpointing = config.lora_r, config.gradient_checkpointing
    shape = model_shape(model)
    result = MemoryEstimate(model, method, batch, cutoff, shape)
    train_precisions = ("bf16",) if method == "qlora" else ("fp32", "bf16")
    for precision in train_precisions:
        result.training[precision] = training_parts(
            shape, method, precision, batch, cutoff, lora_r, gradient_checkpointing
        )
    for precision in ("fp32", "bf16", "int8", "nf4"):
        result.inference[precision] = inference_parts(shape, precision, cutoff)
    return result


def total(parts: dict[str, float]) -> float:
    return sum(parts.values())


def render_estimate(result: MemoryEstimate) -> Any:
    """A rich table: one row per part, one column per precision, training then inference."""
    from rich.table import Table

    shape = result.shape
    title = (
        f"{result.model}: {shape.params / 1e6:,.1f}M params; {result.method}, batch {result.batch} x "
        f"{result.cutoff} tokens (GiB)"
    )
    table = Table(title=title)
    table.add_column("part", no_wrap=True, min_width=11)
    columns = [("train", p, parts) for p, parts in result.training.items()]
    columns += [("infer", p, parts) for p, parts in result.inference.items()]
    for kind, precision, _ in columns:
        table.add_column(f"{kind} {precision}", justify="right")
    names = list(dict.fromkeys(name for _, _, parts in columns for name in parts))
    for name in names:
        table.add_row(
            name, *[f"{parts[name] / GIB:.2f}" if name in parts else "-" for _, _, parts in columns]
        )
    table.add_row("[bold]total", *[f"[bold]{total(parts) / GIB:.2f}" for _, _, parts in columns])
    return table
