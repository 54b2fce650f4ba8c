"""DPO, full / freeze tuning, continued pretraining from a random init, and 2-process DDP (gloo)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import REPO, run_slm
from train_helpers import (
    ADAPTER_FILES,
    DEMO,
    MODEL_FILES,
    loss_curve,
    read_jsonl,
    tiny_recipe,
    write_jsonl,
    write_recipe,
)


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(
        tmp_path_factory.mktemp("data") / "sft.jsonl", read_jsonl(DEMO / "support_sft.jsonl")[:32]
    )


DPO_STEPS = dict(max_steps=6, lr=5e-3, batch_size=8)  # one batch holds every pair


@pytest.fixture(scope="module")
def dpo_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dpo-pairs")
    # 8 pairs: TRL's chunked log-prob head runs in plain torch on a CPU, over the 49k vocabulary
    return write_jsonl(folder / "pairs.jsonl", read_jsonl(DEMO / "support_dpo.jsonl")[:8])


def train_dpo(folder: Path, model_dir: Path, pairs: Path, **dpo: float) -> Path:
    recipe = tiny_recipe(model_dir, folder / "dpo", pairs, **DPO_STEPS)
    recipe.update(method="dpo", dpo=dpo)
    result = run_slm("train", str(write_recipe(folder / "dpo.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "dpo"


@pytest.fixture(scope="module")
def plain_dpo_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, dpo_pairs: Path
) -> Path:
    """6 DPO steps on 8 pairs (dpo.ftx 0), shared by the margin and the ftx tests."""
    return train_dpo(tmp_path_factory.mktemp("plain-dpo"), tiny_model_dir, dpo_pairs)


def test_cpu_dpo_scores_only_the_answer_tokens_with_the_same_log_probs(
    tiny_model_dir: Path,
) -> None:
    # TRL's fused head projects every position onto the vocabulary unless it compacts to the
    # labelled ones; on a CPU we compact (slmkit.train.dpo): same per-token log-probs and grads
    import torch
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM

    from slmkit.train import dpo

    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, 12))
    labels = ids.clone()
    labels[:, :7] = -100  # the prompt
    labels[1, 10:] = -100  # padding
    results = {}
    # an in-process DPO run earlier in this worker may have patched it already: start unpatched
    original = getattr(trl_utils._use_triton, "original", trl_utils._use_triton)
    trl_utils._use_triton = original
    try:
        for compact in (False, True):
            if compact:
                dpo.score_only_labelled_positions()
                dpo.score_only_labelled_positions()  # twice is once
                assert trl_utils._use_triton(torch.device("cpu")) is True
            model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
            trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy"))
            out = model(input_ids=ids, labels=labels, fused_lm_head=True)
            out.loss.backward()
            grad = model.get_output_embeddings().weight.grad.clone()
            results[compact] = (out.log_probs.detach(), out.entropy.detach(), grad)
    finally:
        trl_utils._use_triton = original
    assert trl_utils._use_triton(torch.device("cpu")) is False, "the patch was undone"
    (lp0, ent0, g0), (lp1, ent1, g1) = results[False], results[True]
    assert (lp0 != 0).sum() == 5 + 3, "the 8 answer tokens were scored"
    torch.testing.assert_close(lp1, lp0)
    torch.testing.assert_close(ent1, ent0)
    torch.testing.assert_close(g1, g0)


def test_dpo_raises_the_reward_margin(plain_dpo_run: Path) -> None:
    # every logged margin is measured on the same 8 pairs (one batch)
    run = plain_dpo_run
    margins = loss_curve(run, "rewards/margins")
    gap = [
        c - r
        for c, r in zip(
            loss_curve(run, "logps/chosen"), loss_curve(run, "logps/rejected"), strict=True
        )
    ]
    assert len(margins) == 6
    assert abs(margins[0]) < 1e-3, "policy == reference at the first step"
    assert margins[-1] > 0.1 and margins[-1] > max(margins[:3])
    assert gap[-1] > gap[0] + 1.0, "chosen-minus-rejected log-prob gap grew"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert not (run / "adapter" / "ref").exists(), "only the trained adapter is saved"


def test_dpo_ftx_keeps_the_chosen_answers_likely(
    tmp_path: Path, tiny_model_dir: Path, dpo_pairs: Path, plain_dpo_run: Path
) -> None:
    # dpo.ftx adds the chosen answers' NLL to the DPO loss (LLaMA-Factory's pref_ftx): the same
    # 6 steps on the same pairs must end with the chosen answers more likely than plain DPO does
    with_ftx = train_dpo(tmp_path, tiny_model_dir, dpo_pairs, ftx=2.0)
    final_chosen = {
        ftx: loss_curve(run, "logps/chosen")[-1]
        for ftx, run in ((0.0, plain_dpo_run), (2.0, with_ftx))
    }
    assert final_chosen[2.0] > final_chosen[0.0] + 1.0, final_chosen
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "bad", dpo_pairs, **DPO_STEPS)
    recipe.update(method="dpo", dpo={"ftx": -1})
    bad = run_slm("train", str(write_recipe(tmp_path / "bad.yaml", recipe)))
    assert bad.returncode == 2 and "dpo.ftx" in bad.stderr and "Traceback" not in bad.stderr


def test_dpo_continues_an_sft_run(tmp_path: Path, tiny_model_dir: Path, sft_file: Path) -> None:
    sft = write_recipe(
        tmp_path / "sft.yaml", tiny_recipe(tiny_model_dir, tmp_path / "sft", sft_file, max_steps=3)
    )
    assert run_slm("train", str(sft)).returncode == 0
    pairs = write_jsonl(tmp_path / "pairs.jsonl", read_jsonl(DEMO / "support_dpo.jsonl")[:8])
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "dpo", pairs, max_steps=2)
    recipe.update(method="dpo", dpo={"from_run": str(tmp_path / "sft")})
    result = run_slm("train", str(write_recipe(tmp_path / "dpo.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "dpo" / "manifest.json").read_text())
    assert manifest["init_adapter"] == str(tmp_path / "sft" / "adapter")
    # the policy holds a frozen "ref" copy of the SFT adapter; only the trained one is saved
    assert {p.name for p in (tmp_path / "dpo" / "adapter").iterdir()} == ADAPTER_FILES
    assert manifest["base_model"] == str(tiny_model_dir)


def test_sft_data_with_dpo_method_is_a_clear_error(
    tmp_path: Path, tiny_model_dir: Path, sft_file: Path
) -> None:
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "run", sft_file)
    recipe["method"] = "dpo"
    result = run_slm("train", str(write_recipe(tmp_path / "r.yaml", recipe)))
    assert result.returncode == 2
    assert "sft.jsonl:1" in result.stderr and "preference" in result.stderr


@pytest.mark.parametrize("finetuning", ["full", "freeze"])
def test_full_and_freeze_tuning_save_full_weights(
    tmp_path: Path, tiny_model_dir: Path, sft_file: Path, finetuning: str
) -> None:
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "run", sft_file, max_steps=4, lr=1e-3)
    recipe.update(finetuning=finetuning, freeze={"trainable_layers": 1})
    result = run_slm("train", str(write_recipe(tmp_path / "r.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name for p in (tmp_path / "run" / "model").iterdir()} == MODEL_FILES
    assert not (tmp_path / "run" / "adapter").exists()
    diag = json.loads((tmp_path / "run" / "diagnosis.json").read_text())
    trainable, total = diag["run"]["trainable_params"], diag["run"]["total_params"]
    assert (trainable == total) if finetuning == "full" else (0 < trainable < total / 2)


def test_from_scratch_pretraining_on_plain_text(tmp_path: Path) -> None:
    recipe = REPO / "recipes" / "from-scratch.yaml"
    result = run_slm(
        "train",
        str(recipe),
        "--set",
        f"output_dir={tmp_path / 'scratch'}",
        "--set",
        "train.max_steps=6",
        "--set",
        "train.logging_steps=1",
        "--set",
        "data.cutoff_len=64",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    losses = loss_curve(tmp_path / "scratch")
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    manifest = json.loads((tmp_path / "scratch" / "manifest.json").read_text())
    assert manifest["init"] == "random" and manifest["method"] == "pt"


def test_two_processes_agree_and_the_result_loads(
    tmp_path: Path, tiny_model_dir: Path, sft_file: Path
) -> None:
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_recipe(tiny_model_dir, tmp_path / "ddp", sft_file, max_steps=4, batch_size=2),
    )
    result = run_slm("train", str(recipe), "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tmp_path / "ddp" / "diagnosis.json").read_text())["run"]
    assert run["world_size"] == 2
    first, second = run["rank_weight_checksums"]
    assert first == pytest.approx(second, rel=1e-6)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors"))
    assert float(sum(t.double().sum() for t in saved.values())) == pytest.approx(first, rel=1e-6)
    assert {p.name for p in (tmp_path / "ddp" / "adapter").iterdir()} == ADAPTER_FILES
    from slmkit.models.load import load_model

    model, _ = load_model(str(tmp_path / "ddp"))
    assert model.peft_config
