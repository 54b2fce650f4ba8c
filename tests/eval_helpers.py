"""Helpers for the evaluation tests: eval-set files and a run folder with a LoRA adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from train_helpers import write_run_manifest

FACT_ROWS = [
    {
        "prompt": "How long do I have to return an item?",
        "reference": "You can return unused items within 41 days of delivery.",
        "must_include": ["41 days"],
        "tags": ["returns"],
    },
    {
        "prompt": "What is the restocking fee?",
        "reference": "Opened items carry a flat $6.75 restocking fee.",
        "must_include": ["$6.75"],
        "tags": ["returns", "fees"],
    },
    {
        "messages": [
            {"role": "system", "content": "You are the Brindlewood support desk."},
            {"role": "user", "content": "Which carrier is the cheapest?"},
        ],
        "reference": "Wren Ground is our standard shipping.",
        "must_include": ["Wren Ground"],
        "tags": ["shipping"],
    },
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_adapter_run(base_dir: Path, out: Path, *, seed: int = 0, losses: int = 6) -> Path:
    """A run folder by the contract: manifest.json (base_model), adapter/ (random LoRA), metrics.jsonl."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "adapter")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out / "adapter")
    write_run_manifest(out, str(base_dir))
    rows = [{"step": s, "loss": 2.0 / (s + 1)} for s in range(1, losses + 1)]
    rows.append({"step": losses, "eval_loss": 0.5})
    write_jsonl(out / "metrics.jsonl", rows)
    return out
