"""Measure what each quantization level broke, against the f16 GGUF, and recommend the smallest safe one.

Per level, against the f16 (or bf16/f32) reference GGUF: mean KL divergence, top-1 agreement
and perplexity ratio on held-out text (`kld.py`); temperature-0 answers on the eval prompts,
with their agreement (`agreement.py`) and, when the prompts are an eval set, the task metric
with a paired bootstrap interval of its change. `judge` decides "within thresholds" from the
measures that predict task quality (see `Thresholds`); answer agreement is information unless
`max_different` is set.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slmkit.evaluate import scoring
from slmkit.evaluate.evalset import EvalItem
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

BOOTSTRAP_SAMPLES = 1000


@dataclass
class TaskScore:
    """A level's task metric on the eval set, with its change vs the reference GGUF (paired CI)."""

    metric: str
    mean: float
    low: float
    high: float
    delta: float = 0.0
    delta_low: float = 0.0
    delta_high: float = 0.0
    confidence: float = 0.95

    def real_drop(self, tolerance: float) -> bool:
        """Whether the whole interval of the change lies below -tolerance (a drop, not noise)."""
        return self.delta_high < -tolerance - 1e-12


@dataclass
class LevelResult:
    """One GGUF file's quality against the reference GGUF."""

    level: str
    file: str
    size_bytes: int
    kld: KldStats | None = None
    answers: list[str] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)
    task: TaskScore | None = None
    within: bool = True
    problems: list[str] = field(default_factory=list)
    fallback_tensors: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
    """Fill `within` and `problems`: KLD / top-1 / PPL ratio, a real task-metric drop, and
    answer agreement only when `max_different` is set."""
    problems: list[str] = []
    if level.kld is not None:
        if level.kld.mean_kld > thresholds.max_kld:
            problems.append(f"KLD {level.kld.mean_kld:.3f} > {thresholds.max_kld}")
        if level.kld.same_top1 < thresholds.min_top1:
            problems.append(f"top-1 {level.kld.same_top1:.1%} < {thresholds.min_top1:.0%}")
        if level.kld.ppl_ratio > thresholds.max_ppl_ratio:
            problems.append(f"PPL ratio {level.kld.ppl_ratio:.3f} > {thresholds.max_ppl_ratio}")
    task = level.task
    tolerance = thresholds.max_task_drop
    if task is not None and task.real_drop(tolerance):
        problems.append(
            f"{task.metric} {task.delta:+.3f} vs reference, {task.confidence:.0%} CI "
            f"[{task.delta_low:+.3f}, {task.delta_high:+.3f}] below {-tolerance if tolerance else 0:g}"
        )
    limit = thresholds.max_different
    if limit is not None and level.rates and level.rates["different"] > limit:
        problems.append(f"{level.rates['different']:.0%} different answers > {limit:.0%}")
    level.problems = problems
    level.within = not problems


def recommend(reference: LevelResult, levels: list[LevelResult]) -> str:
    """The smallest file within thresholds; the reference when none is."""
    good = [lv for lv in levels if lv.within]
    return min(good, key=lambda lv: lv.size_bytes).file if good else reference.file


def task_score(
    items: list[EvalItem],
    answers: list[str],
    reference_answers: list[str] | None,
    metric: str,
    confidence: float,
) -> TaskScore | None:
    """Mean task metric with its CI; against the reference's answers, the paired change and its CI."""
    own = [scoring.score_answer(item, answer) for item, answer in zip(items, answers, strict=True)]
    base = None
    if reference_answers is not None:
        base = [scoring.score_answer(i, a) for i, a in zip(items, reference_answers, strict=True)]
    ci = scoring.interval(
        own, metric, base, samples=BOOTSTRAP_SAMPLES, confidence=confidence, seed=0
    )
    if ci["mean"] is None:
        return None
    numbers = {k: float(v) for k, v in ci.items() if v is not None}
    return TaskScore(metric, **numbers, confidence=confidence)


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
    items: list[EvalItem] | None = None,
) -> QuantEvalResult:
    """KLD/top-1/PPL on held-out text, answers on the prompts (scored with the task metric when
    `items`, the eval set the prompts came from, is given) for every level; picks the recommendation."""
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
    metric = scoring.main_metric_for(items, cfg.task_metric) if items else ""
    confidence = cfg.thresholds.task_confidence
    if items:
        reference.task = task_score(items, reference_answers, None, metric, confidence)
    for level in levels:
        level.answers = gguf_answers(
            Path(level.file), prompts, max_tokens=cfg.max_tokens, threads=cfg.threads
        )
        level.rates = agreement_rates(
            level.answers, reference_answers, cfg.thresholds.similar_rouge_l
        )
        if items:
            level.task = task_score(items, level.answers, reference_answers, metric, confidence)
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
    picked = next((lv for lv in result.levels if lv.file == result.recommended), None)
    if picked and picked.rates.get("different") and thresholds.max_different is None:
        notes.append(
            f"{picked.rates['different']:.0%} of {picked.level}'s temperature-0 answers differ from the "
            "reference's; shown, not judged: a small model's greedy answer takes another path after one "
            "flipped token, which says little about quality. "
            + (
                f"The task metric ({picked.task.metric}) compares the answers' quality."
                if picked.task
                else "To judge answers by quality, give an eval set (records with `reference`) as "
                "--prompts, or use `slm run` with `evaluate.data`."
            )
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
