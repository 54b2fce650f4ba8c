"""Find adapters that cannot be merged or served as is, before any work is done, and say what to do."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.export.errors import AdapterNotMergeableError
from slmkit.models.resolve import ResolvedModel

EMBEDDING_NAMES = ("embed_tokens", "lm_head", "wte", "embed_out", "word_embeddings")


@dataclass
class AdapterPlan:
    """What the merge must do beyond `merge_and_unload`, and notes for the report."""

    base_vocab: int
    adapter_vocab: int | None = None  # rows of trained embeddings when the vocabulary was resized
    untie_embeddings: bool = False  # the adapter trained one of a tied embedding / lm_head pair
    notes: list[str] = field(default_factory=list)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterNotMergeableError(f"{path}: unreadable ({exc})") from exc
    return data if isinstance(data, dict) else {}


def embedding_rows(adapter_dir: Path) -> dict[str, int]:
    """Rows of every embedding-shaped tensor saved in the adapter (full copies or LoRA factors)."""
    from safetensors import safe_open

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        return {}
    rows: dict[str, int] = {}
    with safe_open(str(path), framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
            if any(part in name for part in EMBEDDING_NAMES) and "lora_A" not in name:
                rows[name] = int(handle.get_slice(name).get_shape()[0])
    return rows


def check_adapter(resolved: ResolvedModel) -> AdapterPlan:
    """Raise `AdapterNotMergeableError` for adapters we cannot merge; return the merge plan otherwise."""
    assert resolved.adapter is not None and resolved.base is not None
    adapter_cfg = read_json(resolved.adapter / "adapter_config.json")
    base_dir = Path(str(resolved.base.hf_path))
    base_cfg = read_json(base_dir / "config.json") if (base_dir / "config.json").is_file() else {}
    _check_peft_type(adapter_cfg, resolved.adapter)
    _check_base_not_quantized(base_cfg, base_dir)
    plan = AdapterPlan(
        base_vocab=int(base_cfg.get("vocab_size") or _text_config(base_cfg).get("vocab_size") or 0)
    )
    manifest = resolved.extra.get("manifest") or {}
    if isinstance(manifest, dict) and manifest.get("finetuning_type") == "qlora":
        plan.notes.append(
            "QLoRA adapter: merged into the full-precision base (standard practice); "
            "answers can differ slightly from the 4-bit training model"
        )
    modules_to_save = adapter_cfg.get("modules_to_save") or []
    if modules_to_save:
        plan.notes.append(
            f"adapter saves full copies of {', '.join(modules_to_save)}: merged fine, but the "
            "adapter alone cannot be served as a LoRA by llama.cpp; serve the merged export"
        )
    _check_vocab(resolved.adapter, plan, modules_to_save, base_cfg)
    return plan


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    text = cfg.get("text_config")
    return text if isinstance(text, dict) else {}


def _check_peft_type(adapter_cfg: dict[str, Any], adapter_dir: Path) -> None:
    peft_type = str(adapter_cfg.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterNotMergeableError(
            f"{adapter_dir}: adapter type {peft_type or 'unknown'!r} cannot be merged into the weights",
            hint="only LoRA adapters merge; retrain with finetuning: lora, or serve this adapter with the transformers engine",
        )


def _check_base_not_quantized(base_cfg: dict[str, Any], base_dir: Path) -> None:
    quant = base_cfg.get("quantization_config")
    if quant:
        method = quant.get("quant_method", "quantized") if isinstance(quant, dict) else "quantized"
        raise AdapterNotMergeableError(
            f"base model {base_dir} is stored {method}: merging into quantized weights loses the adapter",
            hint="point 'base_model' in the run's manifest.json at the full-precision (fp16/bf16/fp32) base and export again",
        )


def _check_vocab(
    adapter_dir: Path, plan: AdapterPlan, modules_to_save: list[str], base_cfg: dict[str, Any]
) -> None:
    rows = embedding_rows(adapter_dir)
    resized = {
        name: n for name, n in rows.items() if plan.base_vocab and n != plan.base_vocab and n > 1024
    }
    tokenizer_len = _tokenizer_length(adapter_dir)
    if resized:
        plan.adapter_vocab = max(resized.values())
        plan.notes.append(
            f"vocabulary resized {plan.base_vocab} -> {plan.adapter_vocab}: base embeddings resized before merging"
        )
    elif tokenizer_len and plan.base_vocab and tokenizer_len > plan.base_vocab:
        raise AdapterNotMergeableError(
            f"{adapter_dir}: tokenizer has {tokenizer_len} tokens but the base has {plan.base_vocab} and the adapter "
            "holds no trained embeddings for the new tokens",
            hint="retrain with lora modules_to_save: [embed_tokens, lm_head] (or drop the added tokens)",
        )
    tied = bool(
        base_cfg.get(
            "tie_word_embeddings", _text_config(base_cfg).get("tie_word_embeddings", False)
        )
    )
    if tied and any(m in ("embed_tokens", "lm_head") for m in modules_to_save):
        plan.untie_embeddings = True
        plan.notes.append(
            "adapter trains a tied embedding/lm_head: the merged model stores them untied"
        )


def _tokenizer_length(adapter_dir: Path) -> int:
    path = adapter_dir / "tokenizer.json"
    if not path.is_file():
        return 0
    data = read_json(path)
    vocab = data.get("model", {}).get("vocab", {})
    ids = [int(t["id"]) for t in data.get("added_tokens", [])]
    size = len(vocab) if isinstance(vocab, dict) else 0
    return max([size, *(i + 1 for i in ids)])
