"""Load a resolved model with transformers (base, base + LoRA adapter, or a GGUF dequantized)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmkit.errors import ModelNotFoundError
from slmkit.models.resolve import ResolvedModel, resolve_model


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and advisory warnings; slmkit reports progress itself."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:  # TRL tokenizes through datasets.map, which draws its own bars
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    # deprecation notices about transformers' own internals (e.g. is_gradient_checkpointing)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|trl)\.")


def load_tokenizer(model: ResolvedModel | str) -> Any:
    """The tokenizer (with its chat template) of a model reference."""
    from transformers import AutoTokenizer

    resolved = resolve_model(model) if isinstance(model, str) else model
    source, kwargs = _source(resolved)
    if resolved.adapter is not None and (resolved.adapter / "tokenizer_config.json").is_file():
        source, kwargs = resolved.adapter, {}
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"cannot load tokenizer of {resolved.ref!r}: {_first_line(exc)}"
        ) from exc


def load_model(
    model: ResolvedModel | str,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    merge_adapter: bool = False,
) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode; a run folder's adapter is applied on top of its base.
    `auto`: a bf16/fp16 checkpoint stays in bf16 where bf16 runs, anything else is fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    from slmkit.models.precision import resolve_dtype

    quiet_transformers()
    resolved = resolve_model(model) if isinstance(model, str) else model
    refuse_reward_model(resolved)
    tokenizer = load_tokenizer(resolved)
    source, kwargs = _source(resolved)
    folder = None if resolved.kind == "gguf" else resolved.hf_path
    _refuse_vllm_only(resolved, folder)
    dtype = resolve_dtype(dtype, folder, device)
    try:
        lm: Any = AutoModelForCausalLM.from_pretrained(
            source, dtype=getattr(torch, dtype), **kwargs
        )
    except OSError as exc:
        raise ModelNotFoundError(f"cannot load model {resolved.ref!r}: {_first_line(exc)}") from exc
    if resolved.adapter is not None:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, str(resolved.adapter))
        if merge_adapter:
            lm = lm.merge_and_unload()
    lm.to(device).eval()
    return lm, tokenizer


def is_reward_model(resolved: ResolvedModel) -> bool:
    """A run of `slm train` with method: reward (a score head, not a language model head)."""
    manifest = resolved.extra.get("manifest") if resolved.kind == "run" else None
    return isinstance(manifest, dict) and manifest.get("method") == "reward"


def refuse_reward_model(resolved: ResolvedModel) -> None:
    if is_reward_model(resolved):
        raise ModelNotFoundError(
            f"{resolved.ref} is a reward model: it scores answers, it does not write them",
            hint="use it as `slm eval --judge reward:RUN` or in `grpo.rewards: [reward:RUN]`",
        )


def _refuse_vllm_only(resolved: ResolvedModel, folder: Any) -> None:
    """A GPTQ/AWQ INT4 folder (compressed-tensors) is for vLLM; transformers reads it only with the
    compressed-tensors package, which slmkit's own environment does not carry."""
    import importlib.util
    import json

    config = Path(str(folder)) / "config.json" if folder is not None else None
    if config is None or not config.is_file():
        return
    method = (json.loads(config.read_text()).get("quantization_config") or {}).get("quant_method")
    if method == "compressed-tensors" and importlib.util.find_spec("compressed_tensors") is None:
        raise ModelNotFoundError(
            f"{resolved.ref} is a compressed-tensors INT4 folder (slm export --format gptq/awq), "
            "made for vLLM: serve it with `slm serve --engine vllm` on a CUDA GPU, or use the "
            "GGUF export on a CPU"
        )


def _source(resolved: ResolvedModel) -> tuple[Any, dict[str, Any]]:
    if resolved.kind == "run" and resolved.base is not None:
        return _source(resolved.base)
    if resolved.kind == "gguf":
        path = resolved.path
        assert not isinstance(path, str)
        return path.parent, {"gguf_file": path.name}
    return resolved.path, {}


SENTENCEPIECE_FILES = ("tokenizer.model",)


def copy_sentencepiece_model(sources: list[Path | str | None], dest: Path) -> None:
    """Copy `tokenizer.model` into `dest` from the first source folder that has one.

    transformers 5 saves a tokenizer as `tokenizer.json` only; llama.cpp's converter reads the
    SentencePiece model of SPM families (Llama-2, Mistral v0.2, Phi-3, Gemma) from this file."""
    import shutil

    for name in SENTENCEPIECE_FILES:
        if (dest / name).is_file():
            continue
        for source in sources:
            if source is not None and (Path(str(source)) / name).is_file():
                shutil.copy2(Path(str(source)) / name, dest / name)
                break


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
