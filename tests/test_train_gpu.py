"""CUDA paths of training: QLoRA (bitsandbytes 4-bit nf4, double quant, bf16 compute) and bf16
autocast chosen by `precision: auto`. Skipped without a CUDA GPU (conftest); the CPU side of
QLoRA (a clear one-line refusal) is tested in test_train_recipe.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from train_helpers import tiny_recipe

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "support_sft.jsonl"


def _train(recipe_body: dict, tmp_path: Path):  # type: ignore[no-untyped-def]
    from slmkit.recipe import Recipe
    from slmkit.train.run import train

    recipe = Recipe.model_validate(recipe_body)
    return train(recipe, tmp_path)


def test_qlora_trains_a_4bit_base_with_bf16_compute(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    body = tiny_recipe(tiny_model_dir, tmp_path / "qlora", DATA, max_steps=6, lr=2e-3)
    body["finetuning"] = "qlora"
    body["data"]["max_samples"] = 48
    torch.cuda.reset_peak_memory_stats()
    result = _train(body, tmp_path)
    assert result.steps == 6 and result.final_loss is not None and math.isfinite(result.final_loss)
    adapter = json.loads((tmp_path / "qlora" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["peft_type"] == "LORA"
    assert torch.cuda.max_memory_allocated() > 0  # the base really ran on the GPU

    from slmkit.recipe import Recipe
    from slmkit.train.modeling import load_base_model, load_tokenizer_for, resolve_base

    recipe = Recipe.model_validate(body)
    base = resolve_base(recipe)
    model = load_base_model(recipe, base, load_tokenizer_for(base))
    linear = model.model.layers[0].self_attn.q_proj
    assert type(linear).__name__ == "Linear4bit"
    assert linear.weight.quant_state.quant_type == "nf4"
    assert linear.compute_dtype == torch.bfloat16


def test_precision_auto_is_bf16_on_a_capable_gpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    from slmkit.recipe import Recipe
    from slmkit.train.modeling import resolve_precision

    body = tiny_recipe(tiny_model_dir, tmp_path / "bf16", DATA, max_steps=4)
    body["data"]["max_samples"] = 32
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert resolve_precision(Recipe.model_validate(body))[0] == expected
    result = _train(body, tmp_path)
    assert result.steps == 4 and result.final_loss is not None and math.isfinite(result.final_loss)
