"""Score answers: per-item metrics, per-model means, per-tag breakdown, bootstrap intervals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from slmkit.evaluate import metrics
from slmkit.evaluate.config import QUALITY_METRICS
from slmkit.evaluate.evalset import EvalItem
from slmkit.evaluate.generate import Generation

ITEM_METRICS = QUALITY_METRICS  # the per-answer ones, in table order


@dataclass
class ItemScores:
    """Metrics of one answer (None where a metric does not apply)."""

    fact_recall: float | None
    exact_match: float
    rouge_l: float
    forbidden: float | None
    length_words: int
    similarity: float | None = None
    judge_win_rate: float | None = None  # 1 win, 0.5 tie, 0 loss against the first model
    json_valid: float | None = None  # 1 when the answer meets the item's response_format


def score_answer(item: EvalItem, answer: str) -> ItemScores:
    return ItemScores(
        fact_recall=metrics.fact_recall(answer, item.must_include),
        exact_match=metrics.exact_match(answer, item.reference),
        rouge_l=metrics.rouge_l(answer, item.reference),
        forbidden=metrics.forbidden_hit(answer, item.must_not_include),
        length_words=metrics.word_count(answer),
        json_valid=metrics.json_valid(answer, item.response_format),
    )


def add_similarity(
    items: Sequence[EvalItem],
    answers: dict[str, list[Generation]],
    scores: dict[str, list[ItemScores]],
) -> None:
    """Cosine similarity (all-MiniLM-L6-v2) of each answer to its reference."""
    from slmkit.models.embedder import MiniLMEmbedder

    embedder = MiniLMEmbedder.load()
    references = np.asarray(_embed(embedder, [item.reference for item in items]))
    for name, generations in answers.items():
        vectors = np.asarray(_embed(embedder, [g.text or " " for g in generations]))
        cosines = (vectors * references).sum(axis=1)
        for score, cosine in zip(scores[name], cosines, strict=True):
            score.similarity = float(cosine)


def _embed(embedder: object, texts: list[str], batch: int = 32) -> list[list[float]]:
    out: list[list[float]] = []
    for start in range(0, len(texts), batch):
        vectors, _ = embedder.embed(texts[start : start + batch])  # type: ignore[attr-defined]
        out.extend(vectors)
    return out


def metric_values(scores: Sequence[ItemScores], metric: str) -> list[float | None]:
    if metric == "forbidden_rate":
        return [s.forbidden for s in scores]
    return [getattr(s, metric) for s in scores]


def mean_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


@dataclass
class ModelSummary:
    """Means over the eval set plus speed; `by_tag` holds the quality means per tag."""

    values: dict[str, float | None]
    by_tag: dict[str, dict[str, float | None]] = field(default_factory=dict)


def summarize(
    items: Sequence[EvalItem], scores: Sequence[ItemScores], generations: Sequence[Generation]
) -> ModelSummary:
    values: dict[str, float | None] = {
        m: mean_or_none(metric_values(scores, m)) for m in (*ITEM_METRICS, "forbidden_rate")
    }
    values["length_words"] = float(np.mean([s.length_words for s in scores]))
    latencies = [g.latency_s for g in generations if g.error is None]
    speeds = [g.tokens_per_s for g in generations if g.tokens_per_s is not None]
    values["latency_p50_s"] = float(np.percentile(latencies, 50)) if latencies else None
    values["latency_p95_s"] = float(np.percentile(latencies, 95)) if latencies else None
    values["tokens_per_s"] = float(np.median(speeds)) if speeds else None
    values["errors"] = float(sum(g.error is not None for g in generations))
    return ModelSummary(values=values, by_tag=tag_breakdown(items, scores))


def tag_breakdown(
    items: Sequence[EvalItem], scores: Sequence[ItemScores]
) -> dict[str, dict[str, float | None]]:
    tags = sorted({tag for item in items for tag in item.tags})
    out = {}
    for tag in tags:
        picked = [s for item, s in zip(items, scores, strict=True) if tag in item.tags]
        out[tag] = {m: mean_or_none(metric_values(picked, m)) for m in ITEM_METRICS}
        out[tag]["n"] = float(len(picked))
    return out


def main_metric_for(items: Sequence[EvalItem], wanted: str) -> str:
    """The requested main metric; for fact_recall without any item's facts to check, json_valid
    when items ask for JSON, else rouge_l."""
    if wanted == "fact_recall" and not any(item.must_include for item in items):
        return "json_valid" if any(item.response_format for item in items) else "rouge_l"
    return wanted


def interval(
    scores: Sequence[ItemScores],
    metric: str,
    baseline: Sequence[ItemScores] | None,
    *,
    samples: int,
    confidence: float,
    seed: int,
) -> dict[str, float | None]:
    """Mean with bootstrap CI, and (against a baseline) the paired delta with its CI."""
    own = metric_values(scores, metric)
    keep = [i for i, v in enumerate(own) if v is not None]
    values = [float(own[i]) for i in keep]  # type: ignore[arg-type]
    if not values:
        return {"mean": None, "low": None, "high": None}
    low, high = metrics.bootstrap_ci(values, samples=samples, confidence=confidence, seed=seed)
    out: dict[str, float | None] = {"mean": float(np.mean(values)), "low": low, "high": high}
    if baseline is not None:
        base_all = metric_values(baseline, metric)
        base = [float(base_all[i] or 0.0) for i in keep]
        d_low, d_high = metrics.paired_bootstrap_ci(
            values, base, samples=samples, confidence=confidence, seed=seed
        )
        out.update(delta=float(np.mean(values) - np.mean(base)), delta_low=d_low, delta_high=d_high)
    return out
