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
