"""The report's figures as PNG bytes (matplotlib, Agg backend)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from slmkit.evaluate.config import QUALITY_METRICS

if TYPE_CHECKING:
    from slmkit.evaluate.run import EvalResult

BAR_METRICS = QUALITY_METRICS


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:  # type: ignore[no-untyped-def]
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def metric_bars(result: EvalResult) -> bytes:
    """Grouped bars: one group per metric, one bar per model; the main metric has its CI."""
    plt = _pyplot()
    metrics = [
        m for m in BAR_METRICS if any(r.summary.values.get(m) is not None for r in result.models)
    ]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / max(len(result.models), 1)
    for i, model in enumerate(result.models):
        xs = [j + i * width for j in range(len(metrics))]
        ys = [model.summary.values.get(m) or 0.0 for m in metrics]
        bars = ax.bar(xs, ys, width, label=model.name)
        if result.main_metric in metrics and model.main.get("low") is not None:
            j = metrics.index(result.main_metric)
            mean = model.main["mean"] or 0.0
            err = [[mean - (model.main["low"] or 0.0)], [(model.main["high"] or 0.0) - mean]]
            ax.errorbar(xs[j], mean, yerr=err, fmt="none", ecolor="black", capsize=3)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([j + width * (len(result.models) - 1) / 2 for j in range(len(metrics))], metrics)
    ax.set_ylim(0, 1.1)
    ax.set_title(
        f"Quality metrics (error bar: {result.config.confidence:.0%} bootstrap CI of {result.main_metric})"
    )
    ax.legend(fontsize=8)
    return _png(fig)


def tag_bars(result: EvalResult) -> bytes | None:
    """Main metric per tag, one bar per model."""
    tags = sorted({t for item in result.items for t in item.tags})
    if not tags:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(
        figsize=(8, max(2.5, 0.32 * len(tags) * max(1, len(result.models)) / 2 + 1))
    )
    height = 0.8 / max(len(result.models), 1)
    for i, model in enumerate(result.models):
        ys = [j + i * height for j in range(len(tags))]
        xs = [model.summary.by_tag[t].get(result.main_metric) or 0.0 for t in tags]
        ax.barh(ys, xs, height, label=model.name)
    ax.set_yticks(
        [j + height * (len(result.models) - 1) / 2 for j in range(len(tags))], tags, fontsize=8
    )
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel(result.main_metric)
    ax.set_title(f"{result.main_metric} per tag")
    ax.legend(fontsize=8)
    return _png(fig)


def latency_plot(result: EvalResult) -> bytes:
    """Latency distribution per model (box plot with every request as a dot)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 2.8))
    data = [[g.latency_s for g in m.generations if g.error is None] or [0.0] for m in result.models]
    ax.boxplot(data, orientation="horizontal", tick_labels=[m.name for m in result.models])
    for i, values in enumerate(data, start=1):
        ax.scatter(values, [i] * len(values), s=8, alpha=0.4)
    ax.set_xlabel("seconds per answer (from the original generation when cached)")
    ax.set_title("Latency")
    return _png(fig)


def read_losses(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Train and validation loss series from a run folder's metrics.jsonl."""
    series: dict[str, list[tuple[int, float]]] = {"loss": [], "eval_loss": []}
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return series
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        for key in series:
            value = row.get(key)
            if isinstance(value, int | float) and math.isfinite(value) and "step" in row:
                series[key].append((int(row["step"]), float(value)))
    return series


def loss_plot(name: str, run_dir: Path) -> bytes | None:
    series = read_losses(run_dir)
    if not series["loss"]:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 2.8))
    for key, label in (("loss", "train"), ("eval_loss", "validation")):
        if series[key]:
            steps, values = zip(*series[key], strict=True)
            ax.plot(steps, values, marker="." if key == "eval_loss" else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"Training loss of {name} ({run_dir.name})")
    ax.legend(fontsize=8)
    return _png(fig)
