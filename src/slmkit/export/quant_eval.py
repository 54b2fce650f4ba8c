"""Measure what each quantization level broke, against the f16 GGUF, and recommend the smallest safe one.

Per level: mean KL divergence, top-1 agreement and perplexity ratio on held-out text
(`kld.py`), and temperature-0 answer agreement on the eval prompts (`agreement.py`), all
against the f16 (or bf16/f32) reference GGUF. A level is "within thresholds" when every
number is within `Thresholds`; more than `max_different` different answers = too aggressive.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slmkit.export.agreement import Messages, agreement_rates, classify
from slmkit.export.config import ExportConfig, Thresholds
from slmkit.export.kld import (
    KldStats,
    compare_to_reference,
    default_heldout,
    perplexity_context,
    save_reference_logits,
)
from slmkit.export.llama_server import LlamaServerProcess


@dataclass
class LevelResult:
    """One GGUF file's quality against the reference GGUF."""

    level: str
    file: str
    size_bytes: int
    kld: KldStats | None = None
    answers: list[str] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)
    within: bool = True
    problems: list[str] = field(default_factory=list)
    fallback_tensors: int = 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kld"] = asdict(self.kld) if self.kld else None
        return data


@dataclass
class QuantEvalResult:
    reference: LevelResult
    levels: list[LevelResult]
    recommended: str  # file name
    prompts: list[Messages]
    heldout: str
    ppl_ctx: int
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference.to_json(),
            "levels": [lv.to_json() for lv in self.levels],
            "recommended": self.recommended,
            "heldout": self.heldout,
            "ppl_ctx": self.ppl_ctx,
            "prompts": self.prompts,
            "notes": self.notes,
        }


def gguf_answers(
    gguf: Path, prompts: list[Messages], *, max_tokens: int, threads: int
) -> list[str]:
    """Temperature-0 answers of a GGUF served by llama-server with its embedded chat template."""
    with LlamaServerProcess(gguf, threads=threads) as server:
        return [server.chat(messages, max_tokens=max_tokens) for messages in prompts]


def judge(level: LevelResult, thresholds: Thresholds) -> None:
    """Fill `within` and `problems` from the thresholds."""
    problems: list[str] = []
    if level.kld is not None:
        if level.kld.mean_kld > thresholds.max_kld:
            problems.append(f"KLD {level.kld.mean_kld:.3f} > {thresholds.max_kld}")
        if level.kld.same_top1 < thresholds.min_top1:
            problems.append(f"top-1 {level.kld.same_top1:.1%} < {thresholds.min_top1:.0%}")
        if level.kld.ppl_ratio > thresholds.max_ppl_ratio:
            problems.append(f"PPL ratio {level.kld.ppl_ratio:.3f} > {thresholds.max_ppl_ratio}")
    if level.rates and level.rates["different"] > thresholds.max_different:
        problems.append(
            f"too aggressive: {level.rates['different']:.0%} different answers > {thresholds.max_different:.0%}"
        )
    level.problems = problems
    level.within = not problems


def recommend(reference: LevelResult, levels: list[LevelResult]) -> str:
    """The smallest file within thresholds; the reference when none is."""
    good = [lv for lv in levels if lv.within]
    return min(good, key=lambda lv: lv.size_bytes).file if good else reference.file


def count_tokens(hf_dir: Path | None, text: str) -> int:
    if hf_dir is None:
        return len(text.split()) * 4 // 3  # rough words -> tokens when no tokenizer is at hand
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(hf_dir)(text, add_special_tokens=False).input_ids)


def evaluate_quantization(
    reference: LevelResult,
    levels: list[LevelResult],
    prompts: list[Messages],
    cfg: ExportConfig,
    *,
    hf_dir: Path | None = None,
    reference_answers: list[str] | None = None,
) -> QuantEvalResult:
    """KLD/top-1/PPL on held-out text and answer agreement for every level; picks the recommendation."""
    heldout = cfg.heldout or default_heldout()
    ctx = perplexity_context(count_tokens(hf_dir, heldout.read_text(encoding="utf-8")), cfg.ppl_ctx)
    with tempfile.TemporaryDirectory(prefix="slm-kld-") as tmp:
        base_file = Path(tmp) / "reference.kld"
        ref_ppl = save_reference_logits(
            Path(reference.file),
            heldout,
            base_file,
            ctx=ctx,
            chunks=cfg.ppl_chunks,
            threads=cfg.threads,
        )
        reference.kld = KldStats(0.0, 1.0, 1.0, ref_ppl)
        for level in levels:
            level.kld = compare_to_reference(Path(level.file), base_file, threads=cfg.threads)
    if reference_answers is None:
        reference_answers = gguf_answers(
            Path(reference.file), prompts, max_tokens=cfg.max_tokens, threads=cfg.threads
        )
    reference.answers = reference_answers
    reference.rates = {"exact": 1.0, "similar": 0.0, "different": 0.0}
    for level in levels:
        level.answers = gguf_answers(
            Path(level.file), prompts, max_tokens=cfg.max_tokens, threads=cfg.threads
        )
        level.rates = agreement_rates(
            level.answers, reference_answers, cfg.thresholds.similar_rouge_l
        )
        judge(level, cfg.thresholds)
    result = QuantEvalResult(
        reference, levels, recommend(reference, levels), prompts, str(heldout), ctx
    )
    result.notes = quality_notes(result, cfg.thresholds)
    return result


def quality_notes(result: QuantEvalResult, thresholds: Thresholds) -> list[str]:
    """Plain words about what broke; small models lose more to quantization and the report says so."""
    notes = []
    broken = [Path(lv.file).name for lv in result.levels if not lv.within]
    if broken:
        notes.append(f"outside thresholds: {', '.join(broken)} (see problems per level)")
    if result.recommended == result.reference.file and result.levels:
        notes.append(
            "no quantized level is within thresholds: ship the reference GGUF, or relax the thresholds knowingly"
        )
    if any(lv.fallback_tensors for lv in result.levels):
        notes.append(
            "some tensors have rows not divisible by the quant block size and used a fallback type "
            "(common for small models); sizes shrink less than the level names suggest"
        )
    notes.append(
        "small models (< 1B parameters) lose more to quantization than 7-8B models: llama.cpp's published "
        "Llama-3-8B figures are KLD 0.0014 (Q8_0) and 0.031 (Q4_K_M); expect several times more here"
    )
    return notes


def labelled_answers(result: QuantEvalResult, thresholds: Thresholds) -> list[dict[str, Any]]:
    """Per prompt: the reference answer and each level's answer with its label (for the HTML report)."""
    rows = []
    for i, messages in enumerate(result.prompts):
        row: dict[str, Any] = {
            "prompt": messages[-1]["content"],
            "reference": result.reference.answers[i],
        }
        for level in result.levels:
            answer = level.answers[i]
            row[level.level] = {
                "answer": answer,
                "label": classify(answer, result.reference.answers[i], thresholds.similar_rouge_l),
            }
        rows.append(row)
    return rows
