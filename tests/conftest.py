"""Shared fixtures. User state goes to a temp SLM_HOME per test; the model and tool caches
are shared (they are expensive and read-only for tests). Nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_REAL_HOME = Path(os.environ.get("SLM_HOME") or Path.home() / ".cache" / "slmkit")
os.environ.setdefault("SLM_MODEL_CACHE", str(_REAL_HOME / "models"))
os.environ.setdefault("SLM_TOOLS_DIR", str(_REAL_HOME / "llama.cpp" / "lcp-0.3.36"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# thread settings the user gave; the rest are set per run in pytest_configure
_USER_THREADS = {
    name: os.environ[name]
    for name in ("SLM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    if name in os.environ
}

# the board's browser fixtures, once per session for every tests/test_ui_*.py module
from ui_helpers import board, board_model, browser, page  # noqa: E402, F401

# the real PostgreSQL and Valkey/Redis servers' fixtures (postgres_url, cache_url, ...)
pytest_plugins = ["state_servers"]

# The longest test files (a trained run, a full export, the demo pipeline) go first: xdist's
# loadfile hands out the files with the most tests first, so a long file with few tests would
# start last and leave the other worker idle at the end.
LONG_FILES = (
    "test_tour.py",
    "test_families_e2e.py",
    "test_hub_models.py",
    "test_pipeline.py",
    "test_export_quant.py",
    "test_train_methods.py",
    "test_train_run.py",
)


def pytest_configure(config: pytest.Config) -> None:
    """Each pytest worker and the `slm` children it starts get their share of the cores: torch's
    and llama.cpp's threads spin while they wait, so two workers of 2 threads each on 2 cores ran
    a training 10x slower (12 vs 126 tokens/s) than one. Set in the main process before the
    workers start (they inherit its environment)."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        return  # a worker: the main process decided
    workers = getattr(config.option, "numprocesses", None)  # an int, "auto", "logical" or None
    cores = os.cpu_count() or 1
    if not workers:
        share = cores  # no xdist: one process has the machine
    elif isinstance(workers, int):
        share = max(1, cores // workers)
    else:
        share = 1  # one worker per core
    threads = _USER_THREADS.get("SLM_THREADS", str(share))
    os.environ["SLM_THREADS"] = threads
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = _USER_THREADS.get(name, threads)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LongFilesFirst(LoadFileScheduling):  # type: ignore[misc]
        def _assign_work_unit(self, node: object) -> None:
            for name in reversed(LONG_FILES):
                for scope in [s for s in self.workqueue if s.endswith("/" + name)]:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return LongFilesFirst(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def slm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own SLM_HOME (runs, logs, audit db); model/tool caches stay shared."""
    home = tmp_path / "slm_home"
    home.mkdir()
    monkeypatch.setenv("SLM_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The cached HF folder of the embedded SmolLM2-135M-Instruct (converted once by set-up)."""
    from slmkit.models.embedded import ensure_embedded_model

    return ensure_embedded_model()


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    """The embedded model's tokenizer folder, or SLM_TEST_TOKENIZER (a folder with only the
    tokenizer files, for machines without the model cache, e.g. the GPU check)."""
    override = os.environ.get("SLM_TEST_TOKENIZER")
    if override:
        return Path(override)
    from slmkit.models.embedded import ensure_embedded_model

    return ensure_embedded_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A 2-layer random-init Llama with the embedded model's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-model")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def run_slm(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    input_text: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real `slm` CLI in a subprocess (same interpreter), capturing output."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "slmkit.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        input=input_text,
        cwd=cwd or REPO,
        check=False,
    )


@pytest.fixture
def slm():
    """The `run_slm` helper as a fixture: `slm("data", "validate", path)`."""
    return run_slm
