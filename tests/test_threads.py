"""`SLM_THREADS` caps torch's and the llama.cpp tools' threads (a machine shared with other work)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from slmkit.errors import ConfigError
from slmkit.tools import default_threads, threads_setting


def torch_threads(env: dict[str, str]) -> int:
    """torch's thread count in a fresh process that applies the setting as `slm` does."""
    code = (
        "from slmkit.tools import apply_threads_setting; apply_threads_setting(); "
        "import torch; print(torch.get_num_threads())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.strip())


def test_slm_threads_reaches_torch_in_a_fresh_process() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    assert torch_threads({**env, "SLM_THREADS": "1"}) == 1
    if (os.cpu_count() or 1) >= 2:
        assert torch_threads({**env, "SLM_THREADS": "2"}) == 2


def test_slm_threads_sets_the_llama_cpp_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLM_THREADS", "3")
    assert threads_setting() == 3 and default_threads() == 3
    monkeypatch.setenv("SLM_THREADS", "")
    assert threads_setting() is None
    assert 1 <= default_threads() <= (os.cpu_count() or 2)


@pytest.mark.parametrize("bad", ["0", "-2", "many", "1.5"])
def test_a_bad_slm_threads_is_one_line(bad: str, monkeypatch: pytest.MonkeyPatch, slm) -> None:
    monkeypatch.setenv("SLM_THREADS", bad)
    with pytest.raises(ConfigError, match="SLM_THREADS: expected a whole number"):
        threads_setting()
    proc = slm("doctor")
    assert proc.returncode == 2
    assert (
        f"error: SLM_THREADS: expected a whole number of threads >= 1, got '{bad}'" in proc.stderr
    )
    assert "Traceback" not in proc.stderr
