"""Merging a LoRA adapter: the merged folder gives base+adapter's logits; unmergeable adapters are refused early."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from export_helpers import make_random_lora_run
from slmkit.export.adapter_checks import check_adapter
from slmkit.export.errors import AdapterNotMergeableError, ExportError
from slmkit.export.merge import merge_adapter
from slmkit.models import resolve_model
from slmkit.models.load import load_model
from train_helpers import write_run_manifest


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_lora_run(tiny_model_dir, tmp_path_factory.mktemp("runs") / "tiny-lora")


def test_merged_folder_gives_base_plus_adapter_logits(
    tiny_run: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    result = merge_adapter(tiny_run, tmp_path / "merged", dtype="float32")
    assert result.max_logit_diff < 1e-4
    assert result.saved_top1 == 1.0
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in result.out_dir.iterdir()
    }
    peft_model, tokenizer = load_model(str(tiny_run))
    merged = AutoModelForCausalLM.from_pretrained(result.out_dir, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = tokenizer("Merged weights must act like the adapter.", return_tensors="pt").input_ids
    with torch.inference_mode():
        want, got, before = peft_model(ids).logits, merged(ids).logits, base(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (
        before - want
    ).abs().max() > 1e-2  # the adapter really changes the model, so the check means something


def test_fp16_merge_keeps_top1_and_template(tiny_run: Path, tmp_path: Path) -> None:
    result = merge_adapter(tiny_run, tmp_path / "merged16", dtype="float16")
    config = json.loads((result.out_dir / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float16"
    assert result.saved_top1 >= 0.98
    template = (tiny_run / "adapter" / "chat_template.jinja").read_text()
    assert (result.out_dir / "chat_template.jinja").read_text() == template


def test_quantized_base_is_refused_before_any_work(
    tiny_model_dir: Path, tmp_path: Path, tiny_run: Path
) -> None:
    import shutil

    base = tmp_path / "quantized-base"
    shutil.copytree(tiny_model_dir, base)
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    write_run_manifest(run, str(base))
    with pytest.raises(AdapterNotMergeableError, match="full-precision"):
        merge_adapter(run, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_grown_tokenizer_without_trained_embeddings_is_refused(
    tiny_run: Path, tmp_path: Path
) -> None:
    import shutil

    from transformers import AutoTokenizer

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    tokenizer.add_tokens([f"<new_token_{i}>" for i in range(200)])
    tokenizer.save_pretrained(run / "adapter")
    with pytest.raises(AdapterNotMergeableError, match="modules_to_save"):
        check_adapter(resolve_model(str(run)))


def test_modules_to_save_is_merged_and_reported(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = make_random_lora_run(tiny_model_dir, tmp_path / "mts-run", modules_to_save=["lm_head"])
    plan = check_adapter(resolve_model(str(run)))
    assert any("lm_head" in note for note in plan.notes)
    assert plan.untie_embeddings  # the tiny base ties embeddings and lm_head
    result = merge_adapter(run, tmp_path / "merged", dtype="float32")
    assert result.saved_top1 == 1.0  # the trained lm_head survived saving (untied)


def test_non_lora_adapter_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config_path = run / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "peft_type": "PROMPT_TUNING"}))
    with pytest.raises(AdapterNotMergeableError, match="only LoRA"):
        merge_adapter(run, tmp_path / "merged")


def test_merge_needs_an_adapter_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="nothing to merge"):
        merge_adapter(str(tiny_model_dir), tmp_path / "merged")


def test_a_sharded_base_merged_shard_by_shard_equals_the_in_memory_merge(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The streamed merge (for bases that do not fit in memory twice) writes every shard with
    W + scale * B @ A, tensor for tensor what peft's merge gives, and keeps the shard layout."""
    from safetensors.torch import load_file

    sharded = tmp_path / "sharded-base"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.save_pretrained(sharded, max_shard_size="2MB")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (sharded / name).write_bytes((tiny_model_dir / name).read_bytes())
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) > 1
    run = make_random_lora_run(sharded, tmp_path / "run")
    streamed = merge_adapter(run, tmp_path / "streamed", dtype="float32", stream=True)
    in_memory = merge_adapter(run, tmp_path / "in-memory", dtype="float32", stream=False)
    assert "merged shard by shard" in " ".join(streamed.notes)
    assert sorted(p.name for p in streamed.out_dir.glob("*.safetensors")) == shards
    got: dict[str, torch.Tensor] = {}
    for shard in shards:
        got.update(load_file(streamed.out_dir / shard))
    want: dict[str, torch.Tensor] = {}
    for shard in in_memory.out_dir.glob("*.safetensors"):
        want.update(load_file(shard))
    changed = 0
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-5, rtol=1e-5)
        original = model.state_dict()[name]
        changed += int(not torch.equal(tensor, original))
    assert changed == 2 * 7  # every targeted projection of both layers, nothing else
    reloaded = AutoModelForCausalLM.from_pretrained(streamed.out_dir, dtype=torch.float32)
    assert (streamed.out_dir / "chat_template.jinja").is_file()
    assert reloaded.config.num_hidden_layers == 2


def test_merged_answers_are_checked_by_one_forward_pass_and_decoded_where_they_differ(
    tiny_run: Path, tmp_path: Path
) -> None:
    from slmkit.export.parity import (
        answers_following,
        follows_greedily,
        torch_answer_ids,
        torch_answers,
    )

    prompts = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "Name three colours."}],
    ]
    model, tokenizer = load_model(str(tiny_run))
    own = torch_answer_ids(model, tokenizer, prompts, 8)
    assert all(
        follows_greedily(model, tokenizer, m, ids) for m, ids in zip(prompts, own, strict=True)
    )
    tampered = [own[0], [own[1][0] + 1, *own[1][1:]]]  # a token the model did not pick
    assert not follows_greedily(model, tokenizer, prompts[1], tampered[1])
    want = torch_answers(model, tokenizer, prompts, 8)
    assert answers_following(model, tokenizer, prompts, tampered, 8) == want
    merged = merge_adapter(tiny_run, tmp_path / "m", dtype="float32", prompts=prompts, max_tokens=8)
    assert merged.merged_answers == merged.reference_answers == want
