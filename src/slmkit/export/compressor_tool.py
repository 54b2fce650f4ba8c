"""GPTQ / AWQ INT4 quantization with llm-compressor, run by the llm-compressor tool environment's
Python (`slm export --format gptq|awq` starts it; it imports nothing from slmkit).

llm-compressor pins an older transformers than slmkit runs on, so it lives in its own virtual
environment, as llama.cpp's tools live in their own folder. The job is one JSON file:

    {"model": HF_DIR, "out": FOLDER, "method": "gptq" | "awq" | "rtn", "calibration": [TEXT, ...],
     "heldout": [TEXT, ...], "max_length": 256, "dtype": "bfloat16" | "float16"}

It writes FOLDER (compressed-tensors, what vLLM loads) and FOLDER/quality.json: the saved folder
reloaded (decompressed) and compared with the unquantized model on the held-out texts: mean KL
divergence per token, top-1 agreement and both perplexities.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

GROUP_SIZES = (128, 64, 32)


def group_size(model: Any) -> int:
    """The largest usual group size that divides every quantized layer's input width."""
    import torch

    widths = {
        m.in_features
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")
    }
    for size in GROUP_SIZES:
        if all(w % size == 0 for w in widths):
            return size
    raise SystemExit(
        f"error: no INT4 group size in {GROUP_SIZES} divides the layer widths {sorted(widths)}"
    )


def scheme(method: str, size: int) -> dict[str, Any]:
    weights = {
        "num_bits": 4,
        "type": "int",
        "symmetric": method != "awq",  # AWQ's scales pair with a zero point
        "strategy": "group",
        "group_size": size,
    }
    return {"group_0": {"targets": ["Linear"], "weights": weights}}


def modifier(method: str, size: int) -> list[Any]:
    """GPTQ quantizes layer by layer against the calibration activations; AWQ first rescales the
    channels that matter most to the activations, then rounds to the nearest grid point."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    if method == "gptq":
        return [GPTQModifier(config_groups=scheme(method, size), ignore=["lm_head"])]
    if method == "rtn":  # round to nearest: the baseline both are measured against
        return [QuantizationModifier(config_groups=scheme(method, size), ignore=["lm_head"])]
    import torch
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.cuda.is_available():  # 0.14's AWQ pins host memory, which needs an accelerator
        IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    return [
        AWQModifier(),
        QuantizationModifier(config_groups=scheme(method, size), ignore=["lm_head"]),
    ]


def encode(tokenizer: Any, texts: list[str], max_length: int) -> list[Any]:
    return [
        tokenizer(t, return_tensors="pt", truncation=True, max_length=max_length).input_ids
        for t in texts
        if t.strip()
    ]


def log_probs(model: Any, batches: list[Any]) -> list[Any]:
    import torch

    with torch.no_grad():
        return [
            torch.log_softmax(model(ids.to(model.device)).logits[0].float(), -1).cpu()
            for ids in batches
        ]


def compare(reference: list[Any], quantized: list[Any], batches: list[Any]) -> dict[str, float]:
    """Mean KL(reference || quantized) per token, top-1 agreement, perplexities of the next tokens."""
    kld = agree = nll_ref = nll_q = 0.0
    tokens = predicted = 0
    for ref, q, ids in zip(reference, quantized, batches, strict=True):
        kld += float((ref.exp() * (ref - q)).sum(-1).sum())
        agree += float((ref.argmax(-1) == q.argmax(-1)).sum())
        tokens += ref.shape[0]
        nxt = ids[0, 1:]
        nll_ref -= float(ref[:-1].gather(1, nxt[:, None]).sum())
        nll_q -= float(q[:-1].gather(1, nxt[:, None]).sum())
        predicted += nxt.shape[0]
    return {
        "kld": kld / tokens,
        "top1": agree / tokens,
        "ppl_reference": math.exp(nll_ref / predicted),
        "ppl": math.exp(nll_q / predicted),
        "tokens": tokens,
    }


def main(job_file: str) -> None:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job = json.loads(Path(job_file).read_text())
    out = Path(job["out"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    model: Any = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
    model = model.to(device)
    batches = encode(tokenizer, job["heldout"], job["max_length"])
    reference = log_probs(model, batches)
    size = group_size(model)
    calibration = Dataset.from_dict({"text": job["calibration"]}).map(
        lambda row: tokenizer(row["text"], truncation=True, max_length=job["max_length"]),
        remove_columns=["text"],
    )
    oneshot(
        model=model,
        dataset=calibration,
        recipe=modifier(job["method"], size),
        max_seq_length=job["max_length"],
        num_calibration_samples=len(job["calibration"]),
    )
    # vLLM's INT4 kernels run 16-bit activations: scales and the unquantized tensors (embeddings,
    # norms) are stored in the checkpoint's 16-bit dtype, bfloat16 for a float32 checkpoint
    stored = getattr(torch, str(job.get("dtype") or "bfloat16"))
    model = model.to(stored)
    model.config.dtype = stored
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    quantize_s = time.perf_counter() - started
    del model
    quality: dict[str, Any] = {}
    if batches:  # the saved folder, decompressed: what vLLM will load
        saved: Any = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        quality = compare(reference, log_probs(saved.to(device), batches), batches)
    quality.update(
        {
            "method": job["method"],
            "bits": 4,
            "group_size": size,
            "calibration_texts": len(job["calibration"]),
            "device": device,
            "quantize_s": round(quantize_s, 1),
        }
    )
    (out / "quality.json").write_text(json.dumps(quality, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
