"""GGUF conversion keeps the training template and special tokens, and a GGUF that lost them is caught."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from export_helpers import copy_hf_folder_without_template, make_random_lora_run, rewrite_gguf
from slmkit.export.deploy import modelfile, split_template, stop_tokens
from slmkit.export.errors import GgufCheckError
from slmkit.export.gguf_file import GgufExpectations, check_gguf, convert_to_gguf, read_metadata
from slmkit.export.merge import merge_adapter


@pytest.fixture(scope="module")
def merged_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("gguf")
    run = make_random_lora_run(tiny_model_dir, work / "run")
    return merge_adapter(run, work / "merged", dtype="float16").out_dir


@pytest.fixture(scope="module")
def tiny_gguf(merged_dir: Path) -> Path:
    return convert_to_gguf(merged_dir, merged_dir.parent / "tiny-f16.gguf", "f16")


def test_converted_gguf_carries_template_and_special_ids(tiny_gguf: Path, merged_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    checked = check_gguf(tiny_gguf, GgufExpectations.from_hf_dir(merged_dir))
    meta = read_metadata(tiny_gguf)
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template
    assert checked["eos_token_id"] == tokenizer.eos_token_id
    assert checked["bos_token_id"] == tokenizer.bos_token_id
    assert checked["architecture"] == "llama"
    assert checked["block_count"] == 2
    assert checked["context_length"] == 1024


def test_wrong_chat_template_is_caught(tiny_gguf: Path, merged_dir: Path, tmp_path: Path) -> None:
    broken = rewrite_gguf(
        tiny_gguf,
        tmp_path / "bad-template.gguf",
        {"tokenizer.chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"},
    )
    with pytest.raises(GgufCheckError, match="differs from the training template"):
        check_gguf(broken, GgufExpectations.from_hf_dir(merged_dir))


def test_missing_chat_template_is_caught(tiny_gguf: Path, merged_dir: Path, tmp_path: Path) -> None:
    broken = rewrite_gguf(
        tiny_gguf, tmp_path / "no-template.gguf", {"tokenizer.chat_template": None}
    )
    with pytest.raises(GgufCheckError, match="no chat template"):
        check_gguf(broken, GgufExpectations.from_hf_dir(merged_dir))


def test_wrong_eos_is_caught(tiny_gguf: Path, merged_dir: Path, tmp_path: Path) -> None:
    broken = rewrite_gguf(tiny_gguf, tmp_path / "bad-eos.gguf", {"tokenizer.ggml.eos_token_id": 0})
    with pytest.raises(GgufCheckError, match="EOS token id is 0 in the GGUF but 2"):
        check_gguf(broken, GgufExpectations.from_hf_dir(merged_dir))


def test_folder_that_lost_its_template_is_caught_after_conversion(
    merged_dir: Path, tmp_path: Path
) -> None:
    bare = copy_hf_folder_without_template(merged_dir, tmp_path / "bare")
    gguf = convert_to_gguf(bare, tmp_path / "bare.gguf", "f16")
    with pytest.raises(GgufCheckError, match="no chat template"):
        check_gguf(
            gguf, GgufExpectations.from_hf_dir(merged_dir)
        )  # expectations: the training tokenizer


def test_ollama_template_reproduces_the_training_template(merged_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    parts = split_template(tokenizer)
    assert parts is not None and parts.verified
    assert parts.default_system is not None and "SmolLM" in parts.default_system
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    assert parts.render(conversation) == tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=True
    )
    stops = stop_tokens(tokenizer, parts)
    assert stops[0] == "<|im_end|>" and "<|im_start|>" in stops
    text = modelfile("model-q8_0.gguf", parts, stops, 2048)
    assert "FROM ./model-q8_0.gguf" in text
    assert '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "SYSTEM" in text
