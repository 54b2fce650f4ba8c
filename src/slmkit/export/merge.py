"""Merge a run's LoRA adapter into its base and save a plain HF folder (weights, tokenizer, chat template).

The merge is verified twice: the merged model in fp32 must give the same logits as base+adapter
(a merge bug), and the saved folder, reloaded, must give the same top-1 tokens (a save bug, e.g.
lost tied weights).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.export.adapter_checks import AdapterPlan, check_adapter
from slmkit.export.agreement import Messages
from slmkit.export.errors import ExportError
from slmkit.models.load import copy_sentencepiece_model, quiet_transformers
from slmkit.models.resolve import ResolvedModel, resolve_model

PROBE_MESSAGES = (
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name three colours."},
    ],
)
PROBE_TEXT = "The quick brown fox jumps over the lazy dog. Small models can run on a laptop."
MIN_SAVED_TOP1 = 0.98  # reloaded merged folder vs base+adapter: share of equal argmax tokens


@dataclass
class MergeResult:
    """The merged HF folder and how closely it matches base+adapter."""

    out_dir: Path
    dtype: str
    max_logit_diff: float  # merged (fp32, in memory) vs base+adapter
    saved_top1: float  # reloaded saved folder vs base+adapter
    saved_max_logit_diff: float
    notes: list[str] = field(default_factory=list)
    reference_answers: list[str] = field(default_factory=list)  # base+adapter, greedy, PyTorch fp32
    merged_answers: list[str] = field(
        default_factory=list
    )  # merged in memory, greedy, PyTorch fp32

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "dtype": self.dtype,
            "max_logit_diff": self.max_logit_diff,
            "saved_top1": self.saved_top1,
            "saved_max_logit_diff": self.saved_max_logit_diff,
            "notes": self.notes,
        }


def resolve_adapter_run(source: str | Path | ResolvedModel) -> ResolvedModel:
    resolved = source if isinstance(source, ResolvedModel) else resolve_model(source)
    if resolved.adapter is None or resolved.base is None:
        raise ExportError(
            f"{resolved.ref}: nothing to merge (not a run folder with an adapter/)",
            hint="`slm merge` takes a LoRA run folder; `slm export` also takes HF folders directly",
        )
    return resolved


def merge_adapter(
    source: str | Path | ResolvedModel,
    out_dir: Path,
    *,
    dtype: str = "float16",
    atol: float = 1e-3,
    prompts: list[Messages] | None = None,
    max_tokens: int = 64,
    stream: bool | None = None,
) -> MergeResult:
    """Merge the adapter of run folder `source` into its base; write an HF folder to `out_dir`.

    With `prompts`, also answers them greedily before and after merging (for the parity gate;
    after merging, only where the merged model does not pick the same tokens).
    `stream` (default: when the base would not fit in memory twice in fp32) merges shard by
    shard instead (`merge_stream.py`): no in-memory checks and no PyTorch answers then.
    """
    import torch

    from slmkit.export.parity import answers_following, decode_answers, torch_answer_ids

    quiet_transformers()  # its loading/saving bars and deprecation notices are not the user's
    resolved = resolve_adapter_run(source)
    plan = check_adapter(resolved)  # before any loading: refuse what cannot be merged
    if stream is None:
        stream = base_too_big(resolved)
    if stream:
        streamed = _merge_streamed(resolved, plan, out_dir, dtype)
        if streamed is not None:
            return streamed
    model, tokenizer = load_base_with_adapter(resolved, plan)
    probes = probe_inputs(tokenizer)
    reference_ids = torch_answer_ids(model, tokenizer, prompts, max_tokens) if prompts else []
    with torch.inference_mode():
        reference = [model(ids).logits.float() for ids in probes]
        merged = model.merge_and_unload()
        merged_logits = [merged(ids).logits.float() for ids in probes]
    reference_answers = decode_answers(tokenizer, reference_ids)
    # the merged model is the same function: checking that it picks base+adapter's tokens takes
    # one forward pass per prompt instead of a second decode loop
    merged_answers = (
        answers_following(merged, tokenizer, prompts, reference_ids, max_tokens) if prompts else []
    )
    max_diff = max(
        float((a - b).abs().max()) for a, b in zip(reference, merged_logits, strict=True)
    )
    if max_diff > atol:
        raise ExportError(
            f"merged model differs from base+adapter (max |logit diff| {max_diff:.2e} > {atol:g})",
            hint="the adapter may target modules peft cannot merge exactly; report it with --debug",
        )
    save_merged(merged, tokenizer, resolved, out_dir, dtype, plan)
    saved_top1, saved_diff = compare_saved(out_dir, probes, reference)
    if saved_top1 < MIN_SAVED_TOP1:
        raise ExportError(
            f"the saved merged folder {out_dir} predicts other tokens than base+adapter "
            f"(top-1 agreement {saved_top1:.1%})",
            hint="try --merge-dtype float32 or bfloat16",
        )
    return MergeResult(
        out_dir,
        dtype,
        max_diff,
        saved_top1,
        saved_diff,
        plan.notes,
        reference_answers,
        merged_answers,
    )


def base_too_big(resolved: ResolvedModel) -> bool:
    """Whether the in-memory merge (base + adapter in fp32, then the reloaded folder) would need
    more than 80% of the memory available now."""
    import psutil

    from slmkit.models.precision import checkpoint_dtype

    assert resolved.base is not None
    base_dir = Path(str(resolved.base.hf_path))
    on_disk = sum(p.stat().st_size for p in base_dir.glob("*.safetensors"))
    width = 2 if checkpoint_dtype(base_dir) in ("bfloat16", "float16") else 4
    needed = 2 * on_disk * (4 / width)
    return needed > 0.8 * psutil.virtual_memory().available


def _merge_streamed(
    resolved: ResolvedModel, plan: AdapterPlan, out_dir: Path, dtype: str
) -> MergeResult | None:
    """The shard-by-shard merge, or None when this adapter needs the in-memory one."""
    from slmkit.export.merge_stream import can_stream, merge_streaming
    from slmkit.models.load import load_tokenizer

    assert resolved.adapter is not None and resolved.base is not None
    why = can_stream(resolved.adapter)
    if plan.adapter_vocab or plan.untie_embeddings:
        why = "trained embeddings"
    if why is not None:
        return None
    streamed = merge_streaming(resolved, out_dir, dtype)
    save_tokenizer_files(load_tokenizer(resolved), resolved, out_dir)
    note = (
        f"merged shard by shard ({streamed.shards} shard(s), {streamed.merged_modules} LoRA "
        f"modules, largest shard {streamed.peak_shard_bytes / 2**30:.2f} GiB): the base does not "
        "fit in memory twice, so the in-memory merge checks and PyTorch answers were skipped"
    )
    return MergeResult(out_dir, dtype, 0.0, 1.0, 0.0, [*plan.notes, note])


def load_base_with_adapter(resolved: ResolvedModel, plan: AdapterPlan) -> tuple[Any, Any]:
    """Base in fp32 (resized when the adapter grew the vocabulary) with the LoRA adapter on top."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from slmkit.models.load import load_tokenizer

    assert resolved.base is not None and resolved.adapter is not None
    tokenizer = load_tokenizer(resolved)
    base = AutoModelForCausalLM.from_pretrained(resolved.base.hf_path, dtype=torch.float32)
    if plan.adapter_vocab:
        base.resize_token_embeddings(plan.adapter_vocab)
    model = PeftModel.from_pretrained(base, str(resolved.adapter))
    return model.eval(), tokenizer


def probe_inputs(tokenizer: Any) -> list[Any]:
    """Token id tensors (batch 1) of a few chat prompts and a plain sentence."""
    texts = [PROBE_TEXT]
    if getattr(tokenizer, "chat_template", None):
        texts += [
            tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
            for m in PROBE_MESSAGES
        ]
    return [tokenizer(t, return_tensors="pt", add_special_tokens=False).input_ids for t in texts]


def save_merged(
    merged: Any,
    tokenizer: Any,
    resolved: ResolvedModel,
    out_dir: Path,
    dtype: str,
    plan: AdapterPlan,
) -> None:
    import torch

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if plan.untie_embeddings:
        merged.lm_head.weight = torch.nn.Parameter(merged.lm_head.weight.detach().clone())
        merged.config.tie_word_embeddings = False
    merged.to(getattr(torch, dtype))
    merged.save_pretrained(out_dir, safe_serialization=True)
    save_tokenizer_files(tokenizer, resolved, out_dir)


def save_tokenizer_files(tokenizer: Any, resolved: ResolvedModel, out_dir: Path) -> None:
    """The run's tokenizer and chat template (what training used), the SentencePiece model and
    the base's generation config, beside the merged weights."""
    tokenizer.save_pretrained(out_dir)
    if (
        getattr(tokenizer, "chat_template", None)
        and not (out_dir / "chat_template.jinja").is_file()
    ):
        (out_dir / "chat_template.jinja").write_text(tokenizer.chat_template)
    assert resolved.base is not None
    copy_sentencepiece_model([resolved.adapter, resolved.base.hf_path], out_dir)
    base_gen = Path(str(resolved.base.hf_path)) / "generation_config.json"
    if base_gen.is_file() and not (out_dir / "generation_config.json").is_file():
        shutil.copy(base_gen, out_dir / "generation_config.json")


def compare_saved(out_dir: Path, probes: list[Any], reference: list[Any]) -> tuple[float, float]:
    """(top-1 agreement, max |logit diff|) of the reloaded folder (in fp32) against base+adapter."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    same = total = 0
    max_diff = 0.0
    with torch.inference_mode():
        for ids, ref in zip(probes, reference, strict=True):
            logits = reloaded(ids).logits.float()
            same += int((logits.argmax(-1) == ref.argmax(-1)).sum())
            total += ref.shape[1]
            max_diff = max(max_diff, float((logits - ref).abs().max()))
    return same / max(total, 1), max_diff
