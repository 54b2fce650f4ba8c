"""DoRA (`lora.use_dora: true`) through the real CLI on the tiny model: `slm train` moves every DoRA
tensor (magnitude vectors included), `slm merge` folds it into weights that give base+adapter's
logits, and `slm export` writes a GGUF that llama-server loads and decodes like the merged model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_slm
from serve_helpers import needs_llama_server
from train_helpers import DEMO, read_jsonl, tiny_recipe, write_jsonl, write_recipe

PROBE = "How long do I have to return an item?"


@pytest.fixture(scope="module")
def dora_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    # a run folder deeper than any terminal is wide: stdout is a pipe here
    folder = tmp_path_factory.mktemp("dora-run") / ("a-long-folder-name-" * 6) / "dora"
    folder.mkdir(parents=True)
    data = write_jsonl(folder / "sft.jsonl", read_jsonl(DEMO / "support_sft.jsonl")[:24])
    recipe = tiny_recipe(tiny_model_dir, folder / "run", data, max_steps=6, save_steps=6)
    recipe["lora"].update({"r": 4, "alpha": 8, "use_dora": True})
    result = run_slm("train", str(write_recipe(folder / "recipe.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    (folder / "train.stdout").write_text(result.stdout)
    return folder / "run"


def test_the_run_folder_arrives_whole_on_stdout_for_scripts(dora_run: Path) -> None:
    """`RUN=$(slm train r.yaml)` must get the path in one line, however long."""
    stdout = (dora_run.parent / "train.stdout").read_text()
    assert len(str(dora_run)) > 150
    assert stdout.strip().splitlines()[-1] == str(dora_run)


@pytest.fixture(scope="module")
def merged_dir(dora_run: Path) -> Path:
    out = dora_run.parent / "merged"
    result = run_slm("merge", str(dora_run), "-o", str(out), "--dtype", "float32")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _initial_dora_tensors(run: Path, base_dir: Path) -> dict[str, torch.Tensor]:
    """The untrained adapter, rebuilt from the run's seed and adapter config as `slm train` builds it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    set_seed(json.loads((run / "manifest.json").read_text())["recipe"]["train"]["seed"])
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    fresh = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(
            r=config["r"],
            lora_alpha=config["lora_alpha"],
            target_modules="all-linear",
            lora_dropout=0.0,
            use_dora=True,
            task_type="CAUSAL_LM",
        ),
    )
    return {
        name.replace(".default", ""): value.detach().clone()
        for name, value in fresh.named_parameters()
        if "lora_" in name
    }


def test_every_dora_parameter_changed(dora_run: Path, tiny_model_dir: Path) -> None:
    from safetensors.torch import load_file

    config = json.loads((dora_run / "adapter" / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    # peft saves the magnitude vector without its ".weight" suffix
    trained = {
        name.removesuffix(".weight"): value
        for name, value in load_file(
            str(dora_run / "adapter" / "adapter_model.safetensors")
        ).items()
    }
    initial = {
        name.removesuffix(".weight"): value
        for name, value in _initial_dora_tensors(dora_run, tiny_model_dir).items()
    }
    assert set(trained) == set(initial)
    magnitudes = [name for name in trained if name.endswith("lora_magnitude_vector")]
    assert magnitudes and len(magnitudes) == sum(name.endswith("lora_A") for name in trained)
    unchanged = [name for name, value in trained.items() if value.equal(initial[name])]
    assert not unchanged, f"DoRA tensors that did not move: {unchanged[:5]}"


def test_merged_dora_gives_base_plus_adapter_logits(
    dora_run: Path, merged_dir: Path, tiny_model_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from slmkit.models.load import load_model

    peft_model, tokenizer = load_model(str(dora_run))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = tokenizer(PROBE, return_tensors="pt").input_ids
    with torch.inference_mode():
        want, got, before = peft_model.float()(ids).logits, merged(ids).logits, base(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (before - want).abs().max() > 1e-3  # the adapter changed the model: the check has teeth
    assert not any("lora" in name for name, _ in merged.named_parameters())


@needs_llama_server
def test_dora_export_gguf_loads_in_llama_server(
    dora_run: Path, merged_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmkit.export.llama_server import LlamaServerProcess

    out = tmp_path / "export"
    result = run_slm(
        "export", str(dora_run), "--quant", "q8_0", "--skip-eval", "--merge-dtype", "float32",
        "-o", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    export = json.loads((out / "export.json").read_text())
    ggufs = {f["file"] for f in export["files"]}
    assert any(name.endswith("q8_0.gguf") for name in ggufs), ggufs
    reference = next(out / name for name in ggufs if not name.endswith("q8_0.gguf"))

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    ids = tokenizer(PROBE, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        top1 = int(merged(ids).logits[0, -1].argmax())
    with LlamaServerProcess(reference, threads=1) as server:
        assert server.tokenize(PROBE) == ids[0].tolist()
        reply = server.client.post(
            "/completion",
            json={"prompt": PROBE, "n_predict": 1, "temperature": 0, "n_probs": 3},
        ).json()
    assert reply["tokens_predicted"] == 1
    predicted = reply["completion_probabilities"][0]
    # the f16 GGUF agrees with the fp32 merged model on the next token (ties aside: top-3 check)
    top3 = predicted.get("top_logprobs") or predicted.get("top_probs") or []  # by llama.cpp version
    assert top1 in [int(p["id"]) for p in top3], (top1, predicted)
