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


@pytest.mark.parametrize(
    ("ratio", "chosen"),
    [(0.22, "bf16"), (0.5, "bf16"), (0.9, "fp32"), (4.9, "fp32"), (None, "fp32")],
)
def test_training_on_a_cpu_autocasts_bf16_only_where_the_probe_shows_it_much_faster(
    monkeypatch: pytest.MonkeyPatch, ratio: float | None, chosen: str
) -> None:
    """`train.precision: auto` on a CPU: bf16 autocast where the probe's bf16 matmul took at
    most half fp32's time (native bf16 trained twice as fast there), fp32 elsewhere, and the
    log line says which figure chose it. The probe's figure is given: the CPU here has one."""
    import torch

    from slmkit.recipe import Recipe
    from slmkit.train import modeling

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine decides by the GPU")
    monkeypatch.setattr(modeling, "bf16_speed_on_cpu", lambda: ratio)
    data = {"train": ["examples/data/support_sft_small.jsonl"]}
    recipe = Recipe.model_validate({"model": "default", "data": data})
    precision, described = modeling.resolve_precision(recipe)
    assert precision == chosen
    if ratio is None:
        assert described == "fp32 (auto: bf16 does not run correctly on this CPU)"
    else:
        assert (
            described
            == f"{chosen} (auto: a bf16 matmul takes {ratio:.2f}x the time of fp32 on this CPU)"
        )
    forced = Recipe.model_validate(
        {"model": "default", "data": data, "train": {"precision": "fp32"}}
    )
    assert modeling.resolve_precision(forced) == ("fp32", "fp32")
