"""End-to-end on the embedded model: the memory estimate matches measured peak RSS (that a quick
LoRA learns the store's facts is shown by the README's tour, tests/test_tour.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from train_helpers import write_recipe


def _peak_rss_gib(args: list[str]) -> float:
    """Peak RSS of one child process, measured by a wrapper so earlier children do not count."""
    wrapper = (
        "import resource,subprocess,sys;p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
        "sys.stderr.write(p.stderr[-3000:]);print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);"
        "sys.exit(p.returncode)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().splitlines()[-1]) / 1024**2


@pytest.mark.slow
def test_memory_estimate_matches_measured_peak_rss(
    tmp_path: Path, embedded_model_dir: Path
) -> None:
    from slmkit.train.estimate import estimate_memory, total

    batch, cutoff = 4, 128
    recipe = {
        "model": "default",
        "method": "pt",
        "output_dir": str(tmp_path / "run"),
        "data": {
            "train": [str(REPO / "recipes" / "data" / "store_text.jsonl")],
            "cutoff_len": cutoff,
        },
        "train": {
            "max_steps": 3,
            "batch_size": batch,
            "save_steps": 1000,
            "report_to": [],
            "precision": "fp32",
        },
    }
    path = write_recipe(tmp_path / "r.yaml", recipe)
    measured = _peak_rss_gib([sys.executable, "-m", "slmkit.cli", "train", str(path)])
    estimate = (
        total(
            estimate_memory("default", method="lora", batch=batch, cutoff=cutoff).training["fp32"]
        )
        / 1024**3
    )
    assert estimate == pytest.approx(measured, rel=0.30), (
        f"estimate {estimate:.2f} GiB, measured {measured:.2f} GiB"
    )


def test_estimate_command_prints_a_table(slm) -> None:
    result = slm(
        "estimate", "--model", "default", "--method", "full", "--batch", "2", "--cutoff", "64"
    )
    assert result.returncode == 0, result.stderr
    for word in (
        "weights",
        "gradients",
        "optimizer",
        "activations",
        "total",
        "train",
        "infer",
        "fp32",
        "nf4",
    ):
        assert word in result.stdout
    bad = slm("estimate", "--method", "half")
    assert (
        bad.returncode == 2
        and "error: --method: Input should be 'lora', 'qlora' or 'full'" in bad.stderr
    )
