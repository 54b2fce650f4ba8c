"""`slm export --format gptq|awq`: INT4 compressed-tensors folders for vLLM, made by llm-compressor in
its own environment (set-up builds it), measured against the unquantized model. vLLM itself needs a
CUDA GPU: serving the folder is checked in the GPU benchmark, not here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_slm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("compressed")
    out = {}
    for method in ("gptq", "awq"):
        result = run_slm(
            "export", str(tiny_model_dir), "--format", method, "-o", str(folder / method)
        )
        assert result.returncode == 0, result.stderr[-3000:]
        (folder / f"{method}.stdout").write_text(result.stdout)
        out[method] = folder / method
    return out


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_the_export_is_a_4_bit_compressed_tensors_folder_vllm_loads(
    method: str, exports: dict[str, Path], tiny_model_dir: Path
) -> None:
    out = exports[method]
    stdout = (out.parent / f"{method}.stdout").read_text()
    folder = Path(stdout.strip().splitlines()[-1])
    assert folder.parent == out and folder.name == f"{tiny_model_dir.name}-{method}-w4a16"
    quant = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors" and quant["format"] == "pack-quantized"
    weights = quant["config_groups"]["group_0"]["weights"]
    assert weights["num_bits"] == 4 and weights["strategy"] == "group"
    assert weights["group_size"] == 64  # the tiny model's 64-wide layers: 128 does not divide
    assert weights["symmetric"] is (method == "gptq")  # AWQ keeps a zero point
    assert quant["ignore"] == ["lm_head"]
    assert (folder / "chat_template.jinja").is_file() or "chat_template" in (
        folder / "tokenizer_config.json"
    ).read_text()
    # INT4 weights: smaller than the fp32 original's Linear layers plus the shared embedding
    original = sum(p.stat().st_size for p in tiny_model_dir.glob("*.safetensors"))
    packed = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert packed < original


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_its_damage_is_measured_on_text_it_was_not_calibrated_on(
    method: str, exports: dict[str, Path]
) -> None:
    manifest = json.loads((exports[method] / "export.json").read_text())
    quality = manifest["quality"]
    assert manifest["format"] == method and quality["method"] == method
    assert quality["tokens"] > 100 and quality["calibration_texts"] > 0
    assert 0 <= quality["kld"] < 1 and 0.5 < quality["top1"] <= 1
    assert quality["ppl"] > 1 and quality["ppl_reference"] > 1
    stdout = (exports[method].parent / f"{method}.stdout").read_text()
    assert f"{quality['kld']:.4f}" in stdout  # the table
    readme = (exports[method] / "README.md").read_text()
    assert f"vllm serve ./{manifest['recommended']}" in readme and f"{quality['kld']:.4f}" in readme


def test_llama_cpp_levels_with_gptq_are_one_line_refused(tiny_model_dir: Path) -> None:
    result = run_slm("export", str(tiny_model_dir), "--format", "gptq", "--quant", "q4_k_m")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "llama.cpp levels apply to format gguf" in lines[0]


def test_a_missing_compressor_environment_is_one_line_before_any_work(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = {"SLM_COMPRESSOR_ENV": str(tmp_path / "absent")}
    out = tmp_path / "out"
    result = run_slm("export", str(tiny_model_dir), "--format", "awq", "-o", str(out), env=env)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "llm-compressor environment" in lines[0], result.stderr
    assert "scripts/setup.sh" in lines[0] and "Traceback" not in result.stderr
    assert not out.exists()


def test_the_int4_folder_on_a_cpu_engine_is_one_line_naming_vllm(
    exports: dict[str, Path],
) -> None:
    folder = (
        exports["gptq"] / json.loads((exports["gptq"] / "export.json").read_text())["recommended"]
    )
    result = run_slm("chat", str(folder), "Hi", "--max-tokens", "2")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "compressed-tensors INT4 folder" in lines[0]
    assert "--engine vllm" in lines[0]
