"""The terminal summary: one row per model with deltas vs the first, then the verdict rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

from slmkit.console import out
from slmkit.evaluate.report import DIGITS, fmt
from slmkit.evaluate.retrieval import retrieval_table

if TYPE_CHECKING:
    from slmkit.evaluate.retrieval import RetrievalResult
    from slmkit.evaluate.run import EvalResult

COLUMNS = (
    ("exact_match", "exact"),
    ("rouge_l", "rougeL"),
    ("similarity", "sim"),
    ("judge_win_rate", "judge"),
    ("length_words", "words"),
    ("latency_p50_s", "p50 s"),
    ("tokens_per_s", "tok/s"),
)
WIDTH = 150  # wider than a default pipe's 80 columns, so the table never folds its numbers


def _ci(low: float | None, high: float | None, signed: bool = False) -> str:
    if low is None or high is None:
        return ""
    return f"[{low:+.2f}, {high:+.2f}]" if signed else f"[{low:.2f}, {high:.2f}]"


def summary_table(result: EvalResult) -> Table:
    level = f"{result.config.confidence:.0%}"
    first = result.models[0].name
    values = [m.summary.values for m in result.models]
    shown = [(k, label) for k, label in COLUMNS if any(v.get(k) is not None for v in values)]
    table = Table(
        title=f"{len(result.items)} questions from {result.config.data}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("model")
    table.add_column(result.main_metric, justify="right")
    table.add_column(f"{level} CI", justify="right")
    table.add_column(f"Δ vs {first}", justify="right")
    table.add_column(f"Δ {level} CI", justify="right")
    for _, label in shown:
        table.add_column(label, justify="right")
    for m in result.models:
        main = m.main
        delta = "" if "delta" not in main else f"{main['delta']:+.3f}"
        cells = [fmt(m.summary.values.get(k), DIGITS.get(k, 3)) for k, _ in shown]
        table.add_row(
            m.name,
            fmt(main.get("mean")),
            _ci(main.get("low"), main.get("high")),
            delta,
            _ci(main.get("delta_low"), main.get("delta_high"), signed=True),
            *cells,
        )
    return table


def verdict_table(result: EvalResult) -> Table:
    table = Table(title="verdict", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("model", "criterion", "required", "measured", "result"):
        table.add_column(column)
    for row in result.verdict:
        color = (
            "yellow" if row.expected else {"PASS": "green", "FAIL": "red"}.get(row.status, "dim")
        )
        status = row.shown_status
        table.add_row(
            row.model, row.criterion, row.required, row.measured, f"[{color}]{status}[/{color}]"
        )
    return table


def print_retrieval(result: RetrievalResult) -> None:
    Console(highlight=False, width=max(out.width, WIDTH), force_terminal=out.is_terminal).print(
        retrieval_table(result)
    )


def print_summary(result: EvalResult) -> None:
    wide = Console(highlight=False, width=max(out.width, WIDTH), force_terminal=out.is_terminal)
    wide.print(summary_table(result))
    if result.retrieval is not None:
        wide.print(retrieval_table(result.retrieval))
    if result.verdict:
        wide.print(verdict_table(result))
        for row in result.verdict:
            if row.expected:
                out.print(f"expected: {row.model}: {row.expected}", soft_wrap=True, markup=False)
        out.print(f"overall: {'PASS' if result.passed else 'FAIL'}")
    for note in result.notes:
        out.print(f"note: {note}")
