"""Helpers for the export tests: hand-made run folders (per the run-folder contract) and a GGUF
metadata rewriter to make deliberately broken files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from train_helpers import write_run_manifest


def write_run_folder(run_dir: Path, base_ref: str, peft_model: Any, tokenizer: Any) -> Path:
    """A run folder as `slm train` writes it: manifest.json with base_model, adapter/ with tokenizer."""
    run_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(run_dir / "adapter")
    tokenizer.save_pretrained(run_dir / "adapter")
    write_run_manifest(run_dir, base_ref)
    return run_dir


def make_random_lora_run(
    base_dir: Path, run_dir: Path, *, modules_to_save: list[str] | None = None, seed: int = 0
) -> Path:
    """A LoRA adapter with random (non-zero) A and B on all attention/MLP projections of `base_dir`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        init_lora_weights=False,
        modules_to_save=modules_to_save,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    )
    model = get_peft_model(base, config)
    return write_run_folder(run_dir, str(base_dir), model, AutoTokenizer.from_pretrained(base_dir))


def rewrite_gguf(src: Path, dst: Path, overrides: dict[str, Any]) -> Path:
    """Copy a GGUF, replacing (or with value None, dropping) metadata keys; tensors are copied as is."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(str(dst), arch=arch, endianess=reader.endianess)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in overrides:
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), value_type, sub_type=sub_type)
    for name, value in overrides.items():
        if value is None:
            continue
        value_type = GGUFValueType.STRING if isinstance(value, str) else GGUFValueType.UINT32
        writer.add_key_value(name, value, value_type)
    for tensor in reader.tensors:
        writer.add_tensor_info(
            tensor.name,
            tensor.data.shape,
            tensor.data.dtype,
            tensor.data.nbytes,
            tensor.tensor_type,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    return dst


def copy_hf_folder_without_template(src: Path, dst: Path) -> Path:
    """An HF folder whose tokenizer has no chat template (what a lost template looks like)."""
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    config_path = dst / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    return dst
