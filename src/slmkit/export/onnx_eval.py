"""Run and measure ONNX Runtime GenAI exports against the PyTorch (fp32) model they came from.

Per precision: mean KL divergence, top-1 agreement and perplexity ratio on held-out text (the
runtime's prompt pass returns logits for every position), temperature-0 answers on the eval
prompts with their agreement to PyTorch's, and the task metric when the prompts are an eval set.
The verdict and recommendation reuse `quant_eval.judge` / `recommend` with the same thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slmkit.evaluate import scoring
from slmkit.evaluate.evalset import EvalItem
from slmkit.export.agreement import Messages, agreement_rates
from slmkit.export.config import ExportConfig
from slmkit.export.kld import KldStats, default_heldout
from slmkit.export.onnx import OnnxBuild, folder_size
from slmkit.export.quant_eval import (
    LevelResult,
    QuantEvalResult,
    judge,
    quality_notes,
    recommend,
    task_score,
)


def load_genai(folder: Path) -> Any:
    """An `onnxruntime_genai.Model` for an export folder."""
    import onnxruntime_genai as og

    return og.Model(str(folder))


def stream_tokens(
    model: Any,
    input_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> Iterator[int]:
    """New token ids one by one (KV cache inside the generator); the EOS token is yielded too."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    options: dict[str, Any] = {"max_length": len(input_ids) + max_new_tokens}
    if temperature:
        options.update(do_sample=True, temperature=temperature, top_p=top_p or 1.0, top_k=0)
        if seed is not None:
            options["random_seed"] = seed
    else:
        options.update(do_sample=False)
    params.set_search_options(**options)
    generator = og.Generator(model, params)
    generator.append_tokens(input_ids)
    while not generator.is_done():
        generator.generate_next_token()
        yield int(generator.get_next_tokens()[0])


def prompt_ids(tokenizer: Any, messages: Messages) -> list[int]:
    from slmkit.models.chat import render_chat_prompt

    text = render_chat_prompt(tokenizer, messages)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def greedy_answers(
    model: Any, tokenizer: Any, prompts: list[Messages], max_tokens: int
) -> list[str]:
    eos = _eos_ids(tokenizer)
    answers = []
    for messages in prompts:
        tokens = [t for t in stream_tokens(model, prompt_ids(tokenizer, messages), max_tokens)]
        tokens = [t for t in tokens if t not in eos]
        answers.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
    return answers


def _eos_ids(tokenizer: Any) -> set[int]:
    return {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()


def onnx_logits(model: Any, ids: list[int]) -> np.ndarray:
    """Logits (positions x vocab) of the prompt pass over `ids`."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    return np.asarray(generator.get_output("logits"), dtype=np.float32)[0]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float32)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class _Reference:
    """The reference's log-probs over one chunk, with what every comparison reuses."""

    logp: np.ndarray
    probs: np.ndarray
    top1: np.ndarray
    targets: np.ndarray

    @classmethod
    def of(cls, logits: np.ndarray, targets: np.ndarray) -> _Reference:
        logp = _log_softmax(logits)
        return cls(logp, np.exp(logp), logp.argmax(-1), targets)

    def nll(self, logp: np.ndarray) -> float:
        return -float(logp[np.arange(len(self.targets)), self.targets].astype(np.float64).sum())


@dataclass
class _Tally:
    """Running sums for one model against the reference over held-out chunks."""

    kld: float = 0.0
    same: int = 0
    nll: float = 0.0
    n: int = 0
    ref_nll: float = 0.0

    def add(self, ref: _Reference, cand: np.ndarray) -> None:
        self.kld += float((ref.probs * (ref.logp - cand)).sum(dtype=np.float64))
        self.same += int((ref.top1 == cand.argmax(-1)).sum())
        self.nll += ref.nll(cand)
        self.ref_nll += ref.nll(ref.logp)
        self.n += len(ref.targets)

    def stats(self) -> KldStats:
        ppl, ref_ppl = math.exp(self.nll / self.n), math.exp(self.ref_nll / self.n)
        return KldStats(self.kld / self.n, self.same / self.n, ppl / ref_ppl, ppl)


def heldout_chunks(tokenizer: Any, text: str, ctx: int, limit: int) -> list[list[int]]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    chunks = [ids[i : i + ctx] for i in range(0, len(ids) - 1, ctx)]
    return [c for c in chunks if len(c) > 1][:limit]


def heldout_stats(
    hf_model: Any, models: dict[str, Any], chunks: list[list[int]]
) -> tuple[float, dict[str, KldStats]]:
    """Reference perplexity, and each ONNX model's KLD / top-1 / PPL ratio against `hf_model`."""
    import torch

    tallies = {name: _Tally() for name in models}
    for chunk in chunks:
        with torch.inference_mode():
            ref_logits = hf_model(torch.tensor([chunk])).logits[0].float().numpy()
        ref = _Reference.of(ref_logits[:-1], np.asarray(chunk[1:]))
        for name, model in models.items():
            tallies[name].add(ref, _log_softmax(onnx_logits(model, chunk)[:-1]))
    first = next(iter(tallies.values()))
    ref_ppl = math.exp(first.ref_nll / first.n) if first.n else float("nan")
    return ref_ppl, {name: t.stats() for name, t in tallies.items()}


@dataclass
class OnnxEvalInputs:
    hf_dir: Path  # the merged HF folder: the reference, loaded in fp32
    prompts: list[Messages]
    items: list[EvalItem] | None


def evaluate_onnx(
    builds: list[OnnxBuild], inputs: OnnxEvalInputs, cfg: ExportConfig
) -> QuantEvalResult:
    """Every ONNX folder against the fp32 PyTorch model; the smallest within thresholds is recommended."""
    from slmkit.export.parity import torch_answers
    from slmkit.models.load import load_model

    hf_model, tokenizer = load_model(str(inputs.hf_dir), dtype="float32")
    heldout = cfg.heldout or default_heldout()
    chunks = heldout_chunks(
        tokenizer, heldout.read_text(encoding="utf-8"), cfg.ppl_ctx, cfg.ppl_chunks
    )
    models = {b.precision: load_genai(b.folder) for b in builds}
    ref_ppl, stats = heldout_stats(hf_model, models, chunks)
    answers = torch_answers(hf_model, tokenizer, inputs.prompts, cfg.max_tokens)
    del hf_model
    reference = LevelResult("pytorch-fp32", str(inputs.hf_dir), folder_size(inputs.hf_dir))
    reference.kld = KldStats(0.0, 1.0, 1.0, ref_ppl)
    reference.answers, reference.rates = answers, {"exact": 1.0, "similar": 0.0, "different": 0.0}
    items = inputs.items
    metric = scoring.main_metric_for(items, cfg.task_metric) if items else ""
    confidence = cfg.thresholds.task_confidence
    if items:
        reference.task = task_score(items, answers, None, metric, confidence)
    levels = []
    for build in builds:
        level = LevelResult(f"onnx-{build.precision}", str(build.folder), build.size_bytes)
        level.kld = stats[build.precision]
        level.answers = greedy_answers(
            models[build.precision], tokenizer, inputs.prompts, cfg.max_tokens
        )
        level.rates = agreement_rates(level.answers, answers, cfg.thresholds.similar_rouge_l)
        if items:
            level.task = task_score(items, level.answers, answers, metric, confidence)
        judge(level, cfg.thresholds)
        levels.append(level)
    result = QuantEvalResult(
        reference, levels, recommend(reference, levels), inputs.prompts, str(heldout), cfg.ppl_ctx
    )
    result.notes = quality_notes(result, cfg.thresholds)
    return result
