"""`slm train` on the tiny 2-layer model: loss falls, every LoRA weight moves, the run folder holds
what later stages need, resume after SIGKILL is exact, changed inputs refuse to resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_slm
from train_helpers import (
    ADAPTER_FILES,
    DEMO,
    loss_curve,
    read_jsonl,
    tiny_recipe,
    write_jsonl,
    write_recipe,
)

RUN_FILES = {
    "manifest.json",
    "recipe.yaml",
    "metrics.jsonl",
    "diagnosis.json",
    "loss.png",
    "README.md",
    "adapter",
    "checkpoints",
    "tensorboard",
}


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 demo conversations (a few facts, asked several ways)."""
    rows = read_jsonl(DEMO / "support_sft.jsonl")[:48]
    return write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", rows)


@pytest.fixture(scope="module")
def lora_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sft_file: Path
) -> Path:
    folder = tmp_path_factory.mktemp("lora-run")
    recipe = tiny_recipe(tiny_model_dir, folder / "run", sft_file, max_steps=10, save_steps=5)
    recipe["data"]["val_ratio"] = 0.1
    recipe["train"]["eval_steps"] = 5
    recipe["train"]["report_to"] = ["tensorboard"]
    result = run_slm("train", str(write_recipe(folder / "recipe.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(str(folder / "run"))
    return folder / "run"


def test_lora_losses_are_finite_and_logged(lora_run: Path) -> None:
    # a LoRA barely moves a *random* tiny model's loss (frozen random embeddings); the falling curve
    # is asserted on full tuning here and on the embedded model in test_train_e2e.py
    losses = loss_curve(lora_run)
    assert len(losses) == 10 and all(math.isfinite(x) for x in losses)
    val = loss_curve(lora_run, "eval_loss")
    assert len(val) == 2 and all(math.isfinite(x) for x in val)


def test_full_tuning_loss_is_finite_and_falls(
    tmp_path: Path, tiny_model_dir: Path, sft_file: Path
) -> None:
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "run", sft_file, max_steps=8, lr=3e-3)
    recipe["finetuning"] = "full"
    result = run_slm("train", str(write_recipe(tmp_path / "r.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = loss_curve(tmp_path / "run")
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1


def test_every_lora_parameter_changed(lora_run: Path, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    trained = load_file(str(lora_run / "adapter" / "adapter_model.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # the untrained adapter: same seed and config, rebuilt the way `slm train` builds it
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(json.loads((lora_run / "manifest.json").read_text())["recipe"]["train"]["seed"])
    config = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())
    fresh = get_peft_model(
        base,
        LoraConfig(
            r=config["r"],
            lora_alpha=config["lora_alpha"],
            target_modules="all-linear",
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        ),
    )
    initial = {k.replace(".default", ""): v for k, v in fresh.state_dict().items() if "lora_" in k}
    assert trained and len(trained) == len(initial)
    unchanged = [name for name, value in trained.items() if value.equal(initial[name])]
    assert not unchanged, f"LoRA tensors that did not move: {unchanged[:5]}"
    assert isinstance(PeftModel.from_pretrained(base, str(lora_run / "adapter")), PeftModel)


def test_run_folder_holds_exactly_the_expected_files(lora_run: Path) -> None:
    assert {p.name for p in lora_run.iterdir()} == RUN_FILES
    manifest = json.loads((lora_run / "manifest.json").read_text())
    assert manifest["method"] == "sft" and manifest["finetuning_type"] == "lora"
    assert manifest["status"] == "finished" and manifest["base_weights_fingerprint"]
    assert all(len(digest) == 64 for digest in manifest["data_files"].values())
    assert {"torch", "transformers", "peft"} <= set(manifest["versions"])
    assert {p.name for p in (lora_run / "adapter").iterdir()} == ADAPTER_FILES
    diagnosis = json.loads((lora_run / "diagnosis.json").read_text())
    assert diagnosis["status"] in ("healthy", "stalled", "overfitting") and diagnosis["advice"]
    assert (lora_run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "diagnosis" in (lora_run / "README.md").read_text()
    assert list((lora_run / "tensorboard").iterdir()), "TensorBoard event files"


def _tensorboard_scalars(folder: Path) -> dict[str, list[int]]:
    """Every scalar tag in `folder`'s event files, with the steps it was logged at."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[int]] = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        reader = EventAccumulator(str(events))
        reader.Reload()
        for tag in reader.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.step for e in reader.Scalars(tag))
    return scalars


def test_each_run_of_one_process_logs_to_its_own_tensorboard_folder(
    tmp_path: Path, tiny_model_dir: Path, sft_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `slm run` trains SFT then DPO in one process: DPO's events belong in the DPO run folder
    from slmkit.recipe import Recipe
    from slmkit.train.run import train

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "")  # so that undo removes whatever a run sets
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR")
    sft = tiny_recipe(tiny_model_dir, tmp_path / "sft", sft_file, max_steps=3)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", read_jsonl(DEMO / "support_dpo.jsonl")[:8])
    dpo = tiny_recipe(tiny_model_dir, tmp_path / "dpo", pairs, max_steps=2)
    dpo.update(method="dpo", dpo={"from_run": str(tmp_path / "sft")})
    for body in (sft, dpo):
        body["train"]["report_to"] = ["tensorboard"]
        train(Recipe.model_validate(body), tmp_path)
    for name, steps in (("sft", 3), ("dpo", 2)):
        folder = tmp_path / name / "tensorboard"
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1, f"{name}: one writer, one file"
        scalars = _tensorboard_scalars(folder)
        assert scalars["train/loss"] == list(range(1, steps + 1)), name
        assert ("train/rewards/margins" in scalars) == (name == "dpo"), sorted(scalars)


def test_the_run_folder_is_a_model_reference(lora_run: Path) -> None:
    from slmkit.models.load import load_model

    model, tokenizer = load_model(str(lora_run))
    assert model.peft_config and tokenizer.chat_template


def _train_in_background(recipe: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "slmkit.cli", "train", str(recipe)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ),
    )


def test_resume_after_sigkill_reaches_the_same_loss(
    tmp_path: Path, tiny_model_dir: Path, sft_file: Path
) -> None:
    settings = {"max_steps": 12, "save_steps": 3, "lr": 3e-3}
    straight = write_recipe(
        tmp_path / "a.yaml", tiny_recipe(tiny_model_dir, tmp_path / "a", sft_file, **settings)
    )
    killed = write_recipe(
        tmp_path / "b.yaml", tiny_recipe(tiny_model_dir, tmp_path / "b", sft_file, **settings)
    )
    assert run_slm("train", str(straight)).returncode == 0
    proc = _train_in_background(killed)
    checkpoint = tmp_path / "b" / "checkpoints" / "checkpoint-6"
    deadline = time.monotonic() + 300
    while (
        not (checkpoint / "trainer_state.json").exists()
        and proc.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "adapter").exists(), "killed before the end"
    resumed = run_slm("train", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    a, b = loss_curve(tmp_path / "a"), loss_curve(tmp_path / "b")
    assert len(a) == len(b) == 12
    assert b[-1] == pytest.approx(a[-1], abs=1e-3)


def test_changed_data_refuses_to_resume_unless_forced(
    tmp_path: Path, tiny_model_dir: Path, sft_file: Path
) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", read_jsonl(sft_file)[:24])
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_recipe(tiny_model_dir, tmp_path / "run", data, max_steps=4, save_steps=2),
    )
    assert run_slm("train", str(recipe)).returncode == 0
    write_jsonl(data, read_jsonl(sft_file)[:20])
    refused = run_slm("train", str(recipe))
    assert refused.returncode == 2
    assert f"data file {data} changed" in refused.stderr and "--force" in refused.stderr
    changed_lr = run_slm("train", str(recipe), "--set", "train.lr=1e-3", "--force")
    assert changed_lr.returncode == 0, changed_lr.stderr[-2000:]
    other = run_slm("train", str(recipe), "--set", "train.lr=2e-3")
    assert other.returncode == 2 and "train.lr: 0.001 -> 0.002" in other.stderr


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, tiny_model_dir: Path, sft_file: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # a model one SGD step away from overflow: step 1 is finite (and checkpointed), step 2 is NaN
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.mul_(1e18)
    model.save_pretrained(tmp_path / "fragile")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "fragile")
    recipe = tiny_recipe(
        tmp_path / "fragile",
        tmp_path / "run",
        sft_file,
        max_steps=6,
        save_steps=1,
        lr=1.0,
        max_grad_norm=0.0,
        optimizer="sgd",
        scheduler="constant",
    )
    recipe["finetuning"] = "full"
    result = run_slm("train", str(write_recipe(tmp_path / "r.yaml", recipe)))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "loss became NaN/inf at step 2" in result.stderr
    assert (
        "last good checkpoint: " + str(tmp_path / "run" / "checkpoints" / "checkpoint-1")
        in result.stderr
    )
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["checkpoint-1"]
    diagnosis = json.loads((tmp_path / "run" / "diagnosis.json").read_text())
    assert diagnosis["status"] == "diverged"
    assert not (tmp_path / "run" / "model").exists()
