"""Training test helpers: expected run-folder files, recipes for the tiny model, loss curves."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from conftest import REPO

DEMO = REPO / "examples" / "data"
# what a run folder's adapter/ (LoRA) and model/ (full, freeze) hold: nothing more, nothing less
ADAPTER_FILES = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "README.md",  # peft's model card
}
MODEL_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
}


def write_run_manifest(
    run_dir: Path,
    base_ref: str,
    *,
    base_path: Path | str | None = None,
    method: str = "sft",
    finetuning: str = "lora",
) -> Path:
    """RUN/manifest.json of a finished run, written by train/runfolder.py as `slm train` writes it."""
    from slmkit.recipe import Recipe
    from slmkit.train import runfolder

    recipe = Recipe(
        model=base_ref, method=method, finetuning=finetuning, data={"train": ["train.jsonl"]}
    )
    manifest = runfolder.build_manifest(recipe, base_ref, base_path or base_ref, [])
    manifest["status"] = "finished"
    run_dir.mkdir(parents=True, exist_ok=True)
    runfolder.write_json(run_dir / runfolder.MANIFEST, manifest)
    return run_dir / runfolder.MANIFEST


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def tiny_recipe(model_dir: Path, out_dir: Path, train_file: Path, **train: Any) -> dict[str, Any]:
    """A recipe for the 2-layer tiny model: seconds per run."""
    settings = {
        "lr": 5.0e-3,
        "max_steps": 8,
        "batch_size": 4,
        "save_steps": 4,
        "warmup_ratio": 0.0,
        "logging_steps": 1,
        "report_to": [],
    }
    settings.update(train)
    return {
        "model": str(model_dir),
        "output_dir": str(out_dir),
        "data": {"train": [str(train_file)], "cutoff_len": 128},
        "lora": {"dropout": 0.0},
        "train": settings,
    }


def loss_curve(run_dir: Path, key: str = "loss") -> list[float]:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return [
        float(row[key]) if not isinstance(row[key], str) else math.nan for row in rows if key in row
    ]
