"""`slm export` / `slm merge` / `slm quant-eval` refuse bad input with one line and exit code 2."""

from __future__ import annotations

from pathlib import Path


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_export_missing_source(slm, tmp_path: Path) -> None:
    proc = slm("export", str(tmp_path / "no-such-run"))
    assert proc.returncode == 2
    assert "does not exist" in _one_error_line(proc.stderr)


def test_export_bad_quant_name(slm, tiny_model_dir: Path) -> None:
    proc = slm("export", str(tiny_model_dir), "--quant", "q8_0,q4_x")
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert "unknown quantization 'q4_x'" in line and "q4_k_m" in line


def test_export_of_a_gguf_points_to_quant_eval(slm, tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    proc = slm("export", str(fake), "--skip-eval")
    assert proc.returncode == 2
    assert "quant-eval" in _one_error_line(proc.stderr)


def test_merge_of_a_plain_model_folder(slm, tiny_model_dir: Path) -> None:
    proc = slm("merge", str(tiny_model_dir))
    assert proc.returncode == 2
    assert "nothing to merge" in _one_error_line(proc.stderr)


def test_quant_eval_missing_file(slm, tmp_path: Path) -> None:
    proc = slm("quant-eval", str(tmp_path / "ref.gguf"), str(tmp_path / "q.gguf"))
    assert proc.returncode == 2
    assert "not found" in _one_error_line(proc.stderr)


def test_bad_option_values_name_the_option(slm, tiny_model_dir: Path) -> None:
    proc = slm("export", str(tiny_model_dir), "--max-prompts", "0")
    assert proc.returncode == 2
    assert _one_error_line(proc.stderr).endswith(
        "--max-prompts: Input should be greater than or equal to 1"
    )


def test_one_pydantic_error_formatter_for_files_and_options() -> None:
    import pytest
    from pydantic import ValidationError

    from slmkit.config import dotted, format_validation_error
    from slmkit.errors import ConfigError
    from slmkit.export.config import KNOWN_QUANTS, ExportConfig, export_config

    with pytest.raises(ValidationError) as caught:
        ExportConfig.model_validate({"quants": "q9", "thresholds": {"max_kld": -1, "typo": 1}})
    exc = caught.value
    lines = {("quants",): 3, ("thresholds",): 7, ("thresholds", "max_kld"): 8}
    assert format_validation_error(exc, "r.yaml", lines) == (
        "r.yaml:3: quants: unknown quantization 'q9'; choose from "
        + ", ".join(KNOWN_QUANTS)
        + " (and 2 more problem(s))"
    )
    assert format_validation_error(exc, name=lambda loc: f"--set {dotted(loc)}").startswith(
        "--set quants: unknown quantization 'q9';"
    )
    with pytest.raises(ValidationError) as caught:
        ExportConfig.model_validate({"thresholds": {"typo": 1}})
    assert format_validation_error(caught.value, "r.yaml", lines) == (
        "r.yaml:7: thresholds.typo: unknown key (check the spelling; `--print-config` lists every key)"
    )
    with pytest.raises(ConfigError, match=r"^--quants: unknown quantization 'q9'"):
        export_config(quants="q9")
