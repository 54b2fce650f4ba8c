"""Where slmkit keeps user state and caches. Everything lives under one overridable folder."""

from __future__ import annotations

import os
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the source release whose vendor/llama.cpp we build


def slm_home() -> Path:
    """Root of user state: `$SLM_HOME`, default `~/.cache/slmkit`."""
    return Path(os.environ.get("SLM_HOME") or Path.home() / ".cache" / "slmkit").expanduser()


def models_cache_dir() -> Path:
    """Converted models (`$SLM_MODEL_CACHE`, default `$SLM_HOME/models`)."""
    env = os.environ.get("SLM_MODEL_CACHE")
    return Path(env).expanduser() if env else slm_home() / "models"


def tools_dir() -> Path:
    """llama.cpp binaries, converter script and gguf-py (`$SLM_TOOLS_DIR`, default versioned under `$SLM_HOME`)."""
    env = os.environ.get("SLM_TOOLS_DIR")
    if env:
        return Path(env).expanduser()
    return slm_home() / "llama.cpp" / f"lcp-{LLAMA_CPP_PYTHON_VERSION}"
