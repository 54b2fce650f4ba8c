"""Locations of the llama.cpp tools that set-up builds from pinned source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from slmkit.errors import ConfigError, ToolMissingError
from slmkit.paths import tools_dir

LLAMA_BINARIES = ("llama-server", "llama-quantize", "llama-perplexity")
SETUP_HINT = "run `bash scripts/setup.sh` (or `make test`/`make demo`) to build the llama.cpp tools"


THREADS_ENV = "SLM_THREADS"


def threads_setting() -> int | None:
    """`SLM_THREADS`: the CPU threads every stage uses (torch and the llama.cpp tools), for a
    machine shared with other work. None when unset or empty."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{THREADS_ENV}: expected a whole number of threads >= 1, got {value!r}")
    return int(value)


def apply_threads_setting() -> None:
    """Hand `SLM_THREADS` to torch (OMP/MKL read it once, at import) unless those are set."""
    threads = threads_setting()
    if threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, str(threads))


def default_threads() -> int:
    """CPU threads for llama.cpp tools: `SLM_THREADS` when set, else every core on an idle
    machine (llama.cpp's own default), all but one when other work is running. llama.cpp's worker threads spin while they wait, so
    on a busy machine using every core collapses throughput (measured 1.7 s vs 19 s for one
    perplexity chunk with -t 1 vs -t 2 on 2 cores under load)."""
    setting = threads_setting()
    if setting is not None:
        return setting
    cores = os.cpu_count() or 2
    try:  # slmkit's own previous step may account for about one unit of load
        busy = os.getloadavg()[0] >= cores - 0.5
    except OSError:
        busy = True
    return max(1, cores - 1) if busy else cores


def llama_tool(name: str) -> Path:
    """Path of a built llama.cpp binary, e.g. `llama_tool("llama-server")`."""
    path = tools_dir() / "bin" / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ToolMissingError(f"llama.cpp tool {name!r} not found at {path}", hint=SETUP_HINT)
    return path


def converter_script() -> Path:
    """llama.cpp's own `convert_hf_to_gguf.py` from the pinned source."""
    path = tools_dir() / "convert_hf_to_gguf.py"
    if not path.is_file():
        raise ToolMissingError(f"convert_hf_to_gguf.py not found at {path}", hint=SETUP_HINT)
    return path


def llama_models_dir() -> Path:
    """The pinned source's vocab-only GGUFs and family chat templates (installed by set-up)."""
    path = tools_dir() / "models"
    if not (path / "templates").is_dir():
        raise ToolMissingError(f"llama.cpp's model assets not found at {path}", hint=SETUP_HINT)
    return path


def gguf_py_dir() -> Path:
    """The `gguf-py` package that ships with the pinned llama.cpp (the converter needs this exact one)."""
    return tools_dir() / "gguf-py"


def converter_env() -> dict[str, str]:
    """Environment for running the converter with its bundled gguf-py first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(gguf_py_dir()), env.get("PYTHONPATH")]))
    env["NO_LOCAL_GGUF"] = ""
    return env


def run_converter(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run `convert_hf_to_gguf.py ARGS` with this interpreter; output captured."""
    cmd = [sys.executable, str(converter_script()), *args]
    return subprocess.run(cmd, env=converter_env(), capture_output=True, text=True, check=False)


def tool_version(name: str) -> str:
    """Version line of a llama.cpp tool (all are built from one source; llama-quantize has no --version)."""
    llama_tool(name)
    stamp = tools_dir() / "VERSION"
    if stamp.is_file():
        return stamp.read_text().splitlines()[0].strip()
    proc = subprocess.run(
        [str(llama_tool("llama-server")), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("version")]
    return lines[0] if lines else "unknown version"
