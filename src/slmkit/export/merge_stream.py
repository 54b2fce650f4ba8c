"""Merge a LoRA adapter into a base that does not fit in memory: shard by shard, from disk to disk.

Each base shard is read tensor by tensor (safetensors maps the file), every weight a LoRA module
targets becomes W + scale * B @ A (computed in fp32, stored in the export dtype), and the shard is
written under its own name before the next is read: peak memory is about one output shard plus the
adapter, against twice the whole model in fp32 for the in-memory merge (7B: ~28 GiB). The same
arithmetic as peft's `merge_and_unload` (the test compares the two tensor for tensor).

Adapters that need more than plain LoRA factors (DoRA, rank/alpha patterns, trained embeddings or
`modules_to_save`) are merged in memory instead.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.export.errors import ExportError
from slmkit.models.resolve import ResolvedModel

ADAPTER_PREFIX = "base_model.model."
DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}


@dataclass
class StreamMerge:
    out_dir: Path
    dtype: str
    shards: int
    merged_modules: int
    peak_shard_bytes: int


def can_stream(adapter_dir: Path) -> str | None:
    """Why this adapter must be merged in memory, or None when plain LoRA factors suffice."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("use_dora"):
        return "DoRA"
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        return "per-module ranks"
    if config.get("modules_to_save"):
        return "modules_to_save"
    if config.get("peft_type", "LORA") != "LORA":
        return str(config.get("peft_type"))
    return None


def lora_deltas(adapter_dir: Path) -> tuple[dict[str, tuple[Any, Any]], float]:
    """{base weight name: (A, B)} and the scale of the adapter's LoRA factors."""
    from safetensors import safe_open

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    factors: dict[str, dict[str, Any]] = {}
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
            for part in ("lora_A", "lora_B"):
                marker = f".{part}."
                if marker in key:
                    module = key.split(marker)[0].removeprefix(ADAPTER_PREFIX)
                    factors.setdefault(module + ".weight", {})[part] = handle.get_tensor(key)
                    break
            else:
                if "lora_embedding" in key:
                    raise ExportError(f"{key}: LoRA on embeddings is merged in memory")
    pairs = {name: (f["lora_A"], f["lora_B"]) for name, f in factors.items() if len(f) == 2}
    return pairs, scale


def base_shards(base_dir: Path) -> list[Path]:
    shards = sorted(base_dir.glob("*.safetensors"))
    if not shards:
        raise ExportError(f"{base_dir}: no .safetensors weights to merge shard by shard")
    return shards


def merge_streaming(resolved: ResolvedModel, out_dir: Path, dtype: str) -> StreamMerge:
    """Write the merged model of a run folder to `out_dir`, one base shard at a time."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    assert resolved.adapter is not None and resolved.base is not None
    base_dir = Path(str(resolved.base.hf_path))
    pairs, scale = lora_deltas(resolved.adapter)
    target = getattr(torch, DTYPES[dtype])
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    merged = peak = total = 0
    shards = base_shards(base_dir)
    for shard in shards:
        tensors: dict[str, Any] = {}
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118
                weight = handle.get_tensor(name)
                if name in pairs:
                    lora_a, lora_b = pairs.pop(name)
                    delta = (lora_b.float() @ lora_a.float()) * scale
                    weight = weight.float().add_(delta)
                    merged += 1
                tensors[name] = weight.to(target) if weight.is_floating_point() else weight
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        peak, total = max(peak, size), total + size
        save_file(tensors, str(out_dir / shard.name), metadata={"format": "pt"})
        del tensors
    if pairs:
        raise ExportError(
            f"{len(pairs)} adapter module(s) have no weight in the base (first: {next(iter(pairs))})",
            hint="the adapter was trained on another base; check `base_model` in the run's manifest",
        )
    _copy_beside_weights(base_dir, out_dir, dtype, total)
    return StreamMerge(out_dir, dtype, len(shards), merged, peak)


def _copy_beside_weights(base_dir: Path, out_dir: Path, dtype: str, total: int) -> None:
    """config.json (with the new dtype), the shard index, generation config."""
    config = json.loads((base_dir / "config.json").read_text())
    config["torch_dtype"] = config["dtype"] = dtype
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["metadata"] = {**data.get("metadata", {}), "total_size": total}
        (out_dir / index.name).write_text(json.dumps(data, indent=2))
    if (base_dir / "generation_config.json").is_file():
        shutil.copy2(base_dir / "generation_config.json", out_dir / "generation_config.json")
