"""Model references: every kind resolves to the right paths; bad ones fail with a clear message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slmkit.errors import ModelNotFoundError
from slmkit.models import resolve_model
from slmkit.models.embedded import embedded_gguf_path
from train_helpers import write_run_manifest


@pytest.mark.parametrize("alias", ["default", "smollm2-135m", "DEFAULT", " smollm2-135m-instruct "])
def test_embedded_aliases_resolve_to_cached_folder(alias: str, embedded_model_dir: Path) -> None:
    resolved = resolve_model(alias)
    assert resolved.kind == "embedded"
    assert resolved.path == embedded_model_dir
    assert (embedded_model_dir / "model.safetensors").is_file()
    assert (embedded_model_dir / "chat_template.jinja").is_file() or "chat_template" in (
        embedded_model_dir / "tokenizer_config.json"
    ).read_text()
    assert resolved.gguf == embedded_gguf_path()


def test_embedded_cache_is_reused(embedded_model_dir: Path) -> None:
    before = (embedded_model_dir / "model.safetensors").stat().st_mtime_ns
    resolve_model("default")
    assert (embedded_model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_local_hf_folder(tiny_model_dir: Path) -> None:
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.kind == "hf"
    assert resolved.path == tiny_model_dir.resolve()


def test_gguf_file_and_export_folder(tmp_path: Path) -> None:
    gguf = embedded_gguf_path()
    resolved = resolve_model(str(gguf))
    assert resolved.kind == "gguf" and resolved.gguf == gguf
    export = tmp_path / "export"
    export.mkdir()
    (export / "model-q8_0.gguf").write_bytes(b"GGUF")
    (export / "model-f16.gguf").write_bytes(b"GGUF")
    (export / "export.json").write_text(json.dumps({"recommended": "model-q8_0.gguf"}))
    assert resolve_model(str(export)).gguf == export / "model-q8_0.gguf"


def test_export_folder_without_recommendation_is_ambiguous(tmp_path: Path) -> None:
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    with pytest.raises(ModelNotFoundError, match="2 .gguf files"):
        resolve_model(str(tmp_path))


def test_run_folder_with_adapter(tmp_path: Path, embedded_model_dir: Path) -> None:
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    write_run_manifest(run, "default")
    resolved = resolve_model(str(run))
    assert resolved.kind == "run"
    assert resolved.adapter == (run / "adapter").resolve()
    assert resolved.base is not None and resolved.base.kind == "embedded"
    assert resolved.hf_path == embedded_model_dir


def test_run_folder_with_full_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(tiny_model_dir, run / "model")
    write_run_manifest(run, str(tiny_model_dir), finetuning="full")
    resolved = resolve_model(str(run))
    assert resolved.kind == "run" and resolved.adapter is None
    assert resolved.hf_path == (run / "model").resolve()


def test_hub_id_is_recognised_without_network() -> None:
    """Not cached and offline (the suite runs with HF_HUB_OFFLINE=1): recognised as a hub id;
    using it stops with one line saying how to get it."""
    resolved = resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct", prepare=False)
    assert resolved.kind == "hub" and resolved.path == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert (
        resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct@v1.0", prepare=False).extra["revision"]
        == "v1.0"
    )
    with pytest.raises(ModelNotFoundError, match=r"slm pull HuggingFaceTB/SmolLM2-360M-Instruct"):
        resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("", "empty model reference"),
        ("gpt-17", "unknown model 'gpt-17'"),
        ("./no/such/folder", "does not exist"),
        ("missing.gguf", "does not exist"),
    ],
)
def test_bad_references_name_the_problem_and_the_choices(ref: str, message: str) -> None:
    with pytest.raises(ModelNotFoundError, match=message) as info:
        resolve_model(ref)
    assert "available: default" in str(info.value)


def test_folder_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelNotFoundError, match="folder is not a model"):
        resolve_model(str(tmp_path))


def test_run_folder_without_weights(tmp_path: Path) -> None:
    write_run_manifest(tmp_path, "default")
    with pytest.raises(ModelNotFoundError, match="neither adapter/ nor model/"):
        resolve_model(str(tmp_path))


def test_non_gguf_file(tmp_path: Path) -> None:
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="must be a .gguf"):
        resolve_model(str(weights))
