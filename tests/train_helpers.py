"""Training test helpers, and the session fixture `quick_run_dir` that export/serve/eval tests reuse.

`quick_run_dir` trains one quick LoRA on the embedded model (5 demo facts, a few epochs) once per
test session. Import it into conftest.py (`from train_helpers import quick_run_dir`) to share it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, run_slm

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
QUICK_FACTS = ("return_window", "warranty", "support_phone", "loyalty_program", "promo_code")


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


def quick_eval_rows(facts: tuple[str, ...] = QUICK_FACTS) -> list[dict[str, Any]]:
    """Held-out eval questions (support_eval.jsonl) about `facts`."""
    return [row for row in read_jsonl(DEMO / "support_eval.jsonl") if set(row["tags"]) & set(facts)]


QUICK_PER_FACT = 14  # paraphrases per fact: the demo set has 70, which made this run 5x longer


def write_quick_subset(
    folder: Path, facts: tuple[str, ...] = QUICK_FACTS, per_fact: int = QUICK_PER_FACT
) -> Path:
    """The first `per_fact` support_sft.jsonl conversations whose answers state each of `facts`
    (by their must_include keys)."""
    keys = [key for row in quick_eval_rows(facts) for key in row["must_include"]]
    seen = dict.fromkeys(keys, 0)
    rows = []
    for row in read_jsonl(DEMO / "support_sft.jsonl"):
        answers = " ".join(m["content"] for m in row["messages"] if m["role"] == "assistant")
        stated = [key for key in seen if key in answers]
        if stated and any(seen[key] < per_fact for key in stated):
            rows.append(row)
            for key in stated:
                seen[key] += 1
    return write_jsonl(folder / "quick_sft.jsonl", rows)


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def quick_recipe(folder: Path, train_file: Path) -> dict[str, Any]:
    return {
        "model": "default",
        "output_dir": str(folder / "quick-run"),
        "data": {"train": [str(train_file)], "cutoff_len": 256},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "train": {
            "lr": 1.0e-3,
            "epochs": 3,
            "batch_size": 8,
            "warmup_ratio": 0.05,
            "save_steps": 1000,
            "logging_steps": 2,
            "scheduler": "cosine",
            "report_to": [],
        },
    }


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


def answers(model_ref: str | Path, prompts: list[str], max_new_tokens: int = 40) -> list[str]:
    """Greedy answers to `prompts` in one left-padded batch (fast enough for a test)."""
    import torch

    from slmkit.models.load import load_model

    model, tokenizer = load_model(str(model_ref))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def fact_recall(model_ref: str | Path, rows: list[dict[str, Any]]) -> float:
    """Share of eval questions whose answer contains every `must_include` string."""
    replies = answers(model_ref, [row["prompt"] for row in rows])
    hits = [
        all(key.lower() in reply.lower() for key in row["must_include"])
        for row, reply in zip(rows, replies, strict=True)
    ]
    return sum(hits) / len(hits)


@pytest.fixture(scope="session")
def quick_run_dir(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path) -> Path:
    """A LoRA run folder of the embedded model trained on 5 demo facts (trained once per session)."""
    folder = tmp_path_factory.mktemp("quick-train")
    recipe = write_recipe(folder / "quick.yaml", quick_recipe(folder, write_quick_subset(folder)))
    result = run_slm("train", str(recipe), timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "quick-run"
