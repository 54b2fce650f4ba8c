"""Which dtype weights load in: `auto` keeps a half-precision checkpoint in bf16 only where bf16
runs correctly and not much slower than fp32, or where fp32 would not fit; the probe is real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmkit.models import precision


def _checkpoint(folder: Path, dtype: str, size: int = 1000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"dtype": dtype}))
    (folder / "model.safetensors").write_bytes(b"\0" * size)
    return folder


@pytest.mark.parametrize(
    ("saved", "ratio", "expected"),
    [
        ("bfloat16", 1.1, "bfloat16"),  # native bf16: half the memory, same speed
        ("float16", 0.5, "bfloat16"),
        ("bfloat16", 40.0, "float32"),  # emulated bf16 (AVX2 only): fp32 while it fits
        ("bfloat16", None, "float32"),  # bf16 gave a wrong result or crashed
        ("float32", 1.0, "float32"),
    ],
)
def test_auto_dtype_follows_the_checkpoint_and_the_probe(
    saved: str, ratio: float | None, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "bf16_speed_on_cpu", lambda: ratio)
    folder = _checkpoint(tmp_path / "m", saved)
    assert precision.resolve_dtype("auto", folder) == expected
    assert precision.resolve_dtype("float16", folder) == "float16"  # asked for: as it is


def test_slow_bf16_is_still_chosen_when_fp32_would_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "bf16_speed_on_cpu", lambda: 40.0)
    monkeypatch.setattr(precision, "_fits_in_fp32", lambda folder: False)
    assert precision.resolve_dtype("auto", _checkpoint(tmp_path / "m", "bfloat16")) == "bfloat16"


def test_the_probe_runs_bf16_here_and_is_remembered(
    slm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ratio = precision.bf16_speed_on_cpu()
    assert ratio is not None and ratio > 0  # torch computes bf16 on every CPU we run on
    remembered = json.loads((slm_home / "cpu-bf16.json").read_text())
    assert list(remembered.values()) == [ratio]
    monkeypatch.setattr(precision, "probe_bf16", lambda: pytest.fail("probed twice"))
    assert precision.bf16_speed_on_cpu() == ratio
