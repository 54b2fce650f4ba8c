"""Training switches that change what the model sees: NEFTune noise and packed rows."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from conftest import run_slm
from train_helpers import DEMO, loss_curve, read_jsonl, tiny_recipe, write_jsonl, write_recipe

PROBE_IDS = [[11, 42, 7, 99, 3, 250, 18, 5]]


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = read_jsonl(DEMO / "support_sft.jsonl")[:48]
    return write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", rows)


class EmbeddingProbe(TrainerCallback):
    """At a step of training, embed the same tokens twice in train mode and twice in eval mode."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def on_step_end(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        if state.global_step == 1:
            self.seen.update(embed_twice(model, "during"))


def embed_twice(model: Any, when: str) -> dict[str, Any]:
    import torch

    embeddings, ids = model.get_input_embeddings(), torch.tensor(PROBE_IDS)
    was_training = model.training
    out = {}
    with torch.no_grad():
        for mode in ("train", "eval"):
            model.train(mode == "train")
            out[f"{when}/{mode}"] = (embeddings(ids), embeddings(ids))
    model.train(was_training)
    out[f"{when}/clean"] = embeddings.weight[ids].detach().clone()
    return out


def _neftune_probe(alpha: float | None, tmp_path: Path, model_dir: Path, data: Path) -> Any:
    """Build the SFT trainer the way `slm train` does, train 2 steps, probe during and after."""
    from slmkit.recipe import Recipe
    from slmkit.train.dataset import prepare_sft_data
    from slmkit.train.modeling import (
        load_base_model,
        load_tokenizer_for,
        make_trainable,
        resolve_base,
    )
    from slmkit.train.schedule import choose_schedule, with_schedule
    from slmkit.train.sft import build_sft_trainer

    recipe = Recipe.model_validate(
        tiny_recipe(model_dir, tmp_path / "run", data, max_steps=2, neftune_alpha=alpha)
    )
    base = resolve_base(recipe)
    tokenizer = load_tokenizer_for(base)
    model = make_trainable(recipe, load_base_model(recipe, base, tokenizer), base, False)
    data = prepare_sft_data(recipe, tmp_path, tokenizer)
    recipe = with_schedule(recipe, choose_schedule(recipe, len(data.train_rows), 1_000_000))
    probe = EmbeddingProbe()
    trainer = build_sft_trainer(recipe, tmp_path / "run", model, tokenizer, data, "fp32", [probe])
    trainer.train()
    probe.seen.update(embed_twice(trainer.model, "after"))
    return probe.seen, model.get_input_embeddings().weight.shape[1]


def test_neftune_noise_reaches_the_embeddings_only_while_training(
    tmp_path: Path, tiny_model_dir: Path, sft_file: Path
) -> None:
    seen, hidden = _neftune_probe(5.0, tmp_path, tiny_model_dir, sft_file)
    first, second = seen["during/train"]
    assert not first.equal(second), "two train-mode passes draw different noise"
    bound = 5.0 / math.sqrt(len(PROBE_IDS[0]) * hidden)  # NEFTune: alpha / sqrt(length * dim)
    noise = first - seen["during/clean"]
    assert 0.5 * bound < float(noise.abs().max()) <= bound + 1e-6
    for key in ("during/eval", "after/train", "after/eval"):
        a, b = seen[key]
        assert a.equal(b) and a.equal(seen[key.split("/")[0] + "/clean"]), key


def test_without_neftune_training_embeddings_are_clean(
    tmp_path: Path, tiny_model_dir: Path, sft_file: Path
) -> None:
    seen, _ = _neftune_probe(None, tmp_path, tiny_model_dir, sft_file)
    first, second = seen["during/train"]
    assert first.equal(second) and first.equal(seen["during/clean"])


def test_packing_through_slm_train_trains_on_fewer_longer_rows(
    tmp_path: Path, tiny_model_dir: Path, sft_file: Path
) -> None:
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "run", sft_file, max_steps=8, lr=3e-3)
    recipe["finetuning"] = "full"  # a LoRA barely moves a random tiny model's loss
    recipe["data"].update(packing=True, cutoff_len=256)  # ~3 samples of ~70 tokens per row
    result = run_slm("train", str(write_recipe(tmp_path / "r.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((tmp_path / "run" / "diagnosis.json").read_text())["run"]["data_stats"]
    assert stats["samples"] == 48 and stats["packed_rows"] <= stats["samples"] / 2, stats
    assert "packed into" in " ".join(result.stderr.split())  # the console wraps long lines
    losses = loss_curve(tmp_path / "run")
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1
    # a packed step sees more tokens than an unpacked one: batch 4 rows of ~3 samples each
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    first_seen = next(r["num_input_tokens_seen"] for r in rows if "num_input_tokens_seen" in r)
    assert first_seen > 4 * stats["mean_len"] * 2, (first_seen, stats)
