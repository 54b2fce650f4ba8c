"""What the Data tab shows of a `validate_data` report: the per-file table, the problems table, the
stats line, the token-length histogram frame and a rendered sample with its no-loss part greyed."""

from __future__ import annotations

import functools
import html
import shutil
from pathlib import Path
from typing import Any

from slmkit.data.records import Problem
from slmkit.data.stats import DataStats, compute_stats
from slmkit.data.validate import ValidationReport
from slmkit.errors import DataError

FILE_COLUMNS = ["file", "format", "records", "errors", "warnings", "trainable", "over cutoff"]
PROBLEM_COLUMNS = ["severity", "where", "field", "message"]
HISTOGRAM_BARS = 20


def data_paths(picked: str, uploaded: list[str] | None, uploads_dir: Path) -> list[Path]:
    """Typed paths (one per line or comma-separated) plus uploaded files, copied under `uploads_dir`
    together with their names (so an uploaded dataset_info.json finds the files uploaded with it)."""
    paths = [Path(p.strip()).expanduser() for p in picked.replace(",", "\n").splitlines()]
    paths = [p for p in paths if str(p) not in ("", ".")]
    if uploaded:
        batch = uploads_dir / Path(uploaded[0]).parent.name
        batch.mkdir(parents=True, exist_ok=True)
        copies = [batch / Path(f).name for f in uploaded]
        for source, copy in zip(uploaded, copies, strict=True):
            shutil.copyfile(source, copy)
        info = [c for c in copies if c.name == "dataset_info.json"]
        paths += info or copies
    if not paths:
        raise DataError("no data: upload files or type a file or folder path")
    return paths


@functools.lru_cache(maxsize=4)
def cached_tokenizer(model: str) -> Any:
    """The tokenizer of a model reference, loaded once per board (`none` skips token checks)."""
    if model.strip().lower() in ("", "none"):
        return None
    from slmkit.models.load import load_tokenizer

    return load_tokenizer(model.strip())


def file_rows(report: ValidationReport) -> list[list[Any]]:
    rows = []
    for f in report.files:
        share = "-" if f.trainable_share is None else f"{f.trainable_share:.1%}"
        rows.append([f.file, f.format, f.records, f.errors, f.warnings, share, f.over_cutoff])
    return rows


def problem_rows(problems: list[Problem]) -> list[list[Any]]:
    """Errors first, then warnings; each located as file:line."""
    ordered = sorted(problems, key=lambda p: p.severity != "error")
    return [[p.severity, f"{p.file}:{p.line}", p.field, p.message] for p in ordered]


def report_stats(report: ValidationReport) -> DataStats:
    return compute_stats(report.loaded, report.tokenized, report.config.cutoff_len)


def stats_markdown(report: ValidationReport, stats: DataStats) -> str:
    """Records, token lengths, trainable share and over-cutoff count, as `slm data stats` prints them."""
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(stats.per_kind.items()))
    lines = [
        f"**{stats.records} valid record(s)** ({kinds or 'none'}); "
        f"{report.n_errors} error(s), {report.n_warnings} warning(s)"
    ]
    if not stats.tokenized:
        lines.append("token checks skipped (model: none)")
        return "\n\n".join(lines)
    lines.append(
        f"token length per sample: p50 {stats.percentile(0.5)}, p90 {stats.percentile(0.9)}, "
        f"max {max(stats.lengths, default=0)}; **over cutoff_len {stats.cutoff_len}: "
        f"{stats.over_cutoff}** ({stats.over_cutoff_share:.1%})"
    )
    lines.append(
        f"tokens per epoch: {stats.tokens_per_epoch:,}, of which {stats.trainable_tokens_per_epoch:,} "
        f"carry loss: **trainable share {stats.trainable_share:.1%}**"
    )
    return "\n\n".join(lines)


def histogram_figure(stats: DataStats | None) -> Any:
    """Token length per sample as a bar histogram, bars over the cutoff in red, the cutoff dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=100)
    lengths = stats.lengths if stats is not None else []
    if lengths:
        width = max(1, -(-(max(lengths) - min(lengths) + 1) // HISTOGRAM_BARS))
        edges = list(range(min(lengths), max(lengths) + width + 1, width))
        _, _, bars = ax.hist(lengths, bins=edges, color="#2563eb", edgecolor="white")
        for bar, left in zip(list(bars), edges, strict=False):  # type: ignore[arg-type]
            if stats is not None and left > stats.cutoff_len:
                bar.set_facecolor("#dc2626")
        if stats is not None and stats.cutoff_len <= max(lengths):
            ax.axvline(stats.cutoff_len, color="#dc2626", linestyle="--", label="cutoff_len")
            ax.legend(loc="upper right")
    else:
        ax.text(0.5, 0.5, "no tokenized samples", ha="center", va="center", color="#9ca3af")
    ax.set_title("token length per sample", fontsize=10)
    ax.set_xlabel("tokens per sample")
    ax.set_ylabel("samples")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    plt.close(fig)
    return fig


def sample_html(report: ValidationReport, index: int, tokenizer: Any) -> str:
    """Sample `index` as rendered for training: grey = no loss, highlighted = what the model learns."""
    from slmkit.data.template import mask_segments

    samples = report.tokenized.samples if report.tokenized is not None else []
    if not samples:
        return "<p>(no tokenized samples: pick a model to render them)</p>"
    sample = samples[max(0, min(index, len(samples) - 1))]
    spans = "".join(
        f'<span class="{"slm-trained" if trained else "slm-masked"}">{html.escape(text)}</span>'
        for text, trained in mask_segments(sample, tokenizer)
    )
    head = (
        f"<b>{html.escape(sample.source)}</b>: {len(sample)} tokens, {sample.n_trainable} with "
        'loss &nbsp; <span class="slm-masked">grey: no loss</span> &nbsp; '
        '<span class="slm-trained">highlighted: what the model learns</span>'
    )
    return (
        f'<div id="slm-sample-render">{head}<pre style="white-space: pre-wrap; '
        f'font-size: 13px; padding: 8px; border: 1px solid #e5e7eb; border-radius: 6px;">'
        f"{spans}</pre></div>"
    )
