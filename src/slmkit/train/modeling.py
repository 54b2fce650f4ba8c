"""Load the base model and make the right parameters trainable (LoRA, QLoRA, full, freeze)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.errors import DeviceError, ModelNotFoundError
from slmkit.models.precision import bf16_speed_on_cpu
from slmkit.models.resolve import ResolvedModel, resolve_model
from slmkit.recipe import Recipe
from slmkit.train.config import SIZE_PRESETS


@dataclass
class BaseModelInfo:
    """Where the base weights come from (what the manifest records as the base)."""

    ref: str  # what later stages resolve: "default", a folder, a hub id
    resolved: ResolvedModel
    hf_path: Path | str
    init_adapter: Path | None = None  # an SFT run's adapter that DPO continues


def check_device(recipe: Recipe) -> None:
    """Fail fast (exit 2, one line) when the recipe needs hardware or packages this machine lacks."""
    import torch

    needs_bnb = recipe.finetuning == "qlora" or "8bit" in recipe.train.optimizer
    if needs_bnb and not torch.cuda.is_available():
        what = (
            "finetuning: qlora"
            if recipe.finetuning == "qlora"
            else f"train.optimizer: {recipe.train.optimizer}"
        )
        raise DeviceError(
            f"{what} needs a CUDA GPU (bitsandbytes 4/8-bit kernels), and this machine has none",
            hint="use finetuning: lora on CPU, or run this recipe on a GPU machine",
        )
    if needs_bnb and importlib.util.find_spec("bitsandbytes") is None:
        raise DeviceError(
            "finetuning: qlora needs the bitsandbytes package",
            hint="pip install -e .[gpu] (bitsandbytes), on the CUDA machine",
        )
    if recipe.train.precision == "fp16" and not torch.cuda.is_available():
        raise DeviceError(
            "train.precision: fp16 needs a CUDA GPU", hint="use precision: auto or bf16 on CPU"
        )
    if (
        recipe.train.precision == "bf16"
        and torch.cuda.is_available()
        and not torch.cuda.is_bf16_supported()
    ):
        raise DeviceError(
            "train.precision: bf16 is not supported by this GPU", hint="use precision: fp16 or auto"
        )


# bf16 autocast on a CPU only where the timed probe ran its matmuls in at most this share of
# fp32's time: CPUs with native bf16 (AVX512-BF16, AMX) ran them in ~0.2-0.25 of it and trained
# twice as fast; CPUs without it emulate bf16 and ran them 3-5x slower (docs/benchmarks.md)
CPU_BF16_AT_MOST = 0.5


def resolve_precision(recipe: Recipe) -> tuple[str, str]:
    """The precision to train in, and how the log line describes it. `auto` -> bf16 on a
    bf16-capable CUDA GPU (else fp16), bf16 on a CPU whose timed probe shows bf16 much faster
    than fp32 (the description gives the probe's figure), fp32 elsewhere."""
    import torch

    if recipe.train.precision != "auto":
        return recipe.train.precision, recipe.train.precision
    if torch.cuda.is_available():
        chosen = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return chosen, chosen
    ratio = bf16_speed_on_cpu()
    if ratio is None:
        return "fp32", "fp32 (auto: bf16 does not run correctly on this CPU)"
    chosen = "bf16" if ratio <= CPU_BF16_AT_MOST else "fp32"
    return chosen, f"{chosen} (auto: a bf16 matmul takes {ratio:.2f}x the time of fp32 on this CPU)"


def resolve_base(recipe: Recipe) -> BaseModelInfo:
    """The base model of a recipe; for DPO from an SFT run, that run's base plus its adapter."""
    if recipe.dpo.from_run:
        run = resolve_model(recipe.dpo.from_run)
        if run.kind != "run":
            raise ModelNotFoundError(
                f"dpo.from_run: {recipe.dpo.from_run!r} is not a run folder of `slm train`"
            )
        if run.adapter is None:  # a full fine-tune: its weights are the new base
            return BaseModelInfo(str(run.path), run, run.hf_path)
        assert run.base is not None
        return BaseModelInfo(run.base.ref, run.base, run.base.hf_path, init_adapter=run.adapter)
    resolved = resolve_model(recipe.model)
    if resolved.kind == "gguf":
        raise ModelNotFoundError(
            f"model: {recipe.model!r} is a GGUF file; training needs an HF folder (or `default`)"
        )
    return BaseModelInfo(recipe.model, resolved, resolved.hf_path)


def load_tokenizer_for(base: BaseModelInfo, template: str | None = None) -> Any:
    """The base's tokenizer; a named `template` replaces its chat template, so the run folder
    (and every GGUF exported from it) carries the template the model was trained with."""
    from slmkit.data.template import resolve_chat_template
    from slmkit.models.load import load_tokenizer

    source = base.resolved
    if base.init_adapter is not None:  # DPO after SFT: the SFT run's tokenizer and template
        source = resolve_model(str(base.init_adapter.parent))
    tokenizer = load_tokenizer(source)
    if template is not None:
        tokenizer.chat_template = resolve_chat_template(tokenizer, template)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(recipe: Recipe, base: BaseModelInfo, tokenizer: Any) -> Any:
    """Pretrained weights (4-bit for QLoRA) or a random Llama of a size preset."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if recipe.init.mode == "random":
        return _random_model(recipe.init.size, tokenizer, recipe.data.cutoff_len, recipe.train.seed)
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if recipe.finetuning == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    # a reward model is the base with a one-number score head instead of the vocabulary
    auto_class: Any = AutoModelForCausalLM
    if recipe.method == "reward":
        auto_class, kwargs["num_labels"] = AutoModelForSequenceClassification, 1
    try:
        model = auto_class.from_pretrained(base.hf_path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:  # missing files, unknown architecture
        raise ModelNotFoundError(
            f"model: cannot load {base.ref!r}: {(str(exc).strip().splitlines() or [repr(exc)])[0]}"
        ) from exc
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _random_model(size: str, tokenizer: Any, cutoff_len: int, seed: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    preset: dict[str, Any] = dict(SIZE_PRESETS[size])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max(cutoff_len, 512),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **preset,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def make_trainable(
    recipe: Recipe, model: Any, base: BaseModelInfo, gradient_checkpointing: bool
) -> Any:
    """Apply LoRA / freeze / full; returns the model to train (a PeftModel for adapters)."""
    if recipe.finetuning in ("lora", "qlora"):
        return _with_adapter(recipe, model, base, gradient_checkpointing)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if recipe.finetuning == "freeze":
        _freeze_all_but_last(model, recipe.freeze.trainable_layers, recipe.freeze.train_embeddings)
    return model


def _with_adapter(
    recipe: Recipe, model: Any, base: BaseModelInfo, gradient_checkpointing: bool
) -> Any:
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if recipe.finetuning == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if base.init_adapter is not None:
        return PeftModel.from_pretrained(model, str(base.init_adapter), is_trainable=True)
    lora = recipe.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        bias="none",
        # a reward model trains its new score head whole, beside the adapter
        task_type="SEQ_CLS" if recipe.method == "reward" else "CAUSAL_LM",
        modules_to_save=["score"] if recipe.method == "reward" else None,
    )
    return get_peft_model(model, config)


def _freeze_all_but_last(model: Any, n_layers: int, train_embeddings: bool) -> None:
    layers = (
        model.model.layers if hasattr(model, "model") and hasattr(model.model, "layers") else None
    )
    if layers is None:
        raise ModelNotFoundError(
            "finetuning: freeze supports decoder models with model.layers (Llama-style)"
        )
    for param in model.parameters():
        param.requires_grad = False
    for layer in list(layers)[-n_layers:]:
        for param in layer.parameters():
            param.requires_grad = True
    for param in model.model.norm.parameters():
        param.requires_grad = True
    if train_embeddings:
        for param in model.get_input_embeddings().parameters():
            param.requires_grad = True


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
