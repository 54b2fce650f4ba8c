"""The llama.cpp tools built by set-up run, and `slm doctor` reports them."""

from __future__ import annotations

import subprocess

import pytest

from conftest import run_slm
from slmkit.errors import ToolMissingError
from slmkit.tools import LLAMA_BINARIES, converter_script, llama_tool, run_converter


@pytest.mark.parametrize("name", ["llama-server", "llama-perplexity"])
def test_llama_tool_reports_its_version(name: str) -> None:
    proc = subprocess.run(
        [str(llama_tool(name)), "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert "version:" in proc.stdout + proc.stderr


def test_llama_quantize_lists_the_levels_we_use() -> None:
    # llama-quantize has no --version; its usage text lists the quantization types.
    proc = subprocess.run(
        [str(llama_tool("llama-quantize")), "--help"], capture_output=True, text=True, timeout=60
    )
    for level in ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"):
        assert level in proc.stdout + proc.stderr


def test_converter_runs_with_bundled_gguf_py() -> None:
    assert converter_script().is_file()
    proc = run_converter(["--help"])
    assert proc.returncode == 0, proc.stderr
    assert "--outtype" in proc.stdout


def test_missing_tool_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("SLM_TOOLS_DIR", str(tmp_path))
    with pytest.raises(ToolMissingError, match="scripts/setup.sh"):
        llama_tool("llama-server")


def test_doctor_reports_every_part(embedded_model_dir) -> None:
    proc = run_slm("doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for part in (
        "torch",
        "transformers",
        *LLAMA_BINARIES,
        "convert_hf_to_gguf.py",
        "embedded model",
    ):
        assert part in proc.stdout
    assert "all required parts present" in proc.stdout


def test_doctor_names_missing_tools_and_fix(tmp_path) -> None:
    proc = run_slm("doctor", env={"SLM_TOOLS_DIR": str(tmp_path)})
    assert proc.returncode == 1
    assert "missing" in proc.stdout and "setup.sh" in proc.stdout
