"""Retrieval metrics in the eval report: recall@k and MRR of an index (MiniLM + FAISS) against a
BM25 baseline on the same chunks, for a question -> passage set. Report parts: JSON, an HTML
section and a terminal table; alone (`slm eval --retrieval` without models) or beside the models."""

from __future__ import annotations

import html
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from slmkit import __version__
from slmkit.evaluate.config import RetrievalEvalConfig, RetrievalSettings

LABELS = {"dense": "dense (MiniLM + FAISS)", "bm25": "BM25 (bm25s)"}


@dataclass
class MethodScores:
    method: str
    values: dict[str, float]  # recall@k for each k, and mrr


@dataclass
class QuestionRanks:
    line: int
    question: str
    source: str
    contains: str
    rank: dict[str, int | None]  # method -> rank of the first hit (None: not in the top `depth`)
    top: dict[str, str]  # method -> "source > heading" of its first passage


@dataclass
class RetrievalResult:
    settings: RetrievalSettings
    chunks: int
    kind: str
    methods: list[MethodScores]
    questions: list[QuestionRanks] = field(default_factory=list)

    def metric_names(self) -> list[str]:
        return [f"recall@{k}" for k in self.settings.k] + ["mrr"]


@dataclass
class RetrievalReport:
    result: RetrievalResult
    report_json: Path
    report_html: Path


def evaluate_retrieval(settings: RetrievalSettings, embedder: Any = None) -> RetrievalResult:
    """Every question through dense retrieval and BM25; recall@k and MRR of each."""
    from slmkit.rag.index import load_embedder, load_index
    from slmkit.rag.metrics import (
        Retriever,
        check_answerable,
        first_hit_ranks,
        load_questions,
        mean_reciprocal_rank,
        recall_at,
    )
    from slmkit.rag.search import Bm25Retriever, DenseRetriever

    questions = load_questions(settings.questions)
    index = load_index(settings.index)
    check_answerable(questions, index.chunks, settings.questions)
    retrievers: list[Retriever] = [
        DenseRetriever(index, embedder or load_embedder()),
        Bm25Retriever(index.chunks),
    ]
    rows = [QuestionRanks(q.line, q.question, q.source, q.contains, {}, {}) for q in questions]
    methods = []
    for retriever in retrievers:
        found = first_hit_ranks(retriever, questions, settings.depth)
        ranks = [rank for rank, _ in found]
        values = {f"recall@{k}": recall_at(ranks, k) for k in settings.k}
        values["mrr"] = mean_reciprocal_rank(ranks)
        methods.append(MethodScores(retriever.name, values))
        for row, (rank, hits) in zip(rows, found, strict=True):
            row.rank[retriever.name] = rank
            first = hits[0].chunk if hits else None
            row.top[retriever.name] = (
                "-" if first is None else " > ".join(p for p in (first.source, first.heading) if p)
            )
    return RetrievalResult(settings, len(index.chunks), index.kind, methods, rows)


def run_retrieval_eval(config: RetrievalEvalConfig) -> RetrievalReport:
    """`slm eval --retrieval` without models: the retrieval metrics alone in report.json/.html."""
    result = evaluate_retrieval(config.retrieval)
    report = RetrievalReport(result, config.out_dir / "report.json", config.out_dir / "report.html")
    config.out_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "slmkit": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "retrieval": retrieval_data(result),
    }
    report.report_json.write_text(json.dumps(data, indent=2, default=str))
    report.report_html.write_text(_standalone_html(result), encoding="utf-8")
    return report


def retrieval_data(result: RetrievalResult) -> dict[str, Any]:
    return {
        "questions": str(result.settings.questions),
        "index": str(result.settings.index),
        "n_questions": len(result.questions),
        "chunks": result.chunks,
        "index_kind": result.kind,
        "k": result.settings.k,
        "depth": result.settings.depth,
        "methods": {m.method: m.values for m in result.methods},
        "items": [asdict(q) for q in result.questions],
    }


def retrieval_section(result: RetrievalResult) -> str:
    """The report's HTML section: one row per method, then every question's ranks."""
    names = result.metric_names()
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["method", *names])
    rows = "".join(
        f"<tr><td>{html.escape(LABELS.get(m.method, m.method))}</td>"
        + "".join(f'<td class="num">{m.values[n]:.3f}</td>' for n in names)
        + "</tr>"
        for m in result.methods
    )
    methods = [m.method for m in result.methods]
    item_head = "".join(
        f"<th>{html.escape(h)}</th>"
        for h in [
            "question",
            "source",
            "contains",
            *[f"rank {m}" for m in methods],
            "dense top passage",
        ]
    )
    item_rows = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(v)}</td>" for v in (q.question, q.source, q.contains))
        + "".join(_rank_cell(q.rank[m], result.settings.depth) for m in methods)
        + f"<td>{html.escape(q.top.get('dense', '-'))}</td></tr>"
        for q in result.questions
    )
    s = result.settings
    return f"""<h2>Retrieval</h2>
<p>Question set <code>{html.escape(str(s.questions))}</code> ({len(result.questions)} questions) against the index
<code>{html.escape(str(s.index))}</code> ({result.chunks} chunks, {result.kind}). A hit is a passage from the question's
source file that contains its phrase; MRR counts ranks up to {s.depth}. BM25 ranks the same chunks.</p>
<table><tr>{head}</tr>{rows}</table>
<details><summary>Every question</summary><table><tr>{item_head}</tr>{item_rows}</table></details>"""


def _rank_cell(rank: int | None, depth: int) -> str:
    text = str(rank) if rank is not None else f"> {depth}"
    cls = "hit" if rank == 1 else ("miss" if rank is None else "")
    return f'<td class="num {cls}">{text}</td>'


def _standalone_html(result: RetrievalResult) -> str:
    from slmkit.evaluate.report import STYLE

    return f"""<!doctype html><html><head><meta charset="utf-8"><title>slm eval report</title><style>{STYLE}</style></head><body>
<h1>Evaluation report</h1>
{retrieval_section(result)}
<p style="color:#777;font-size:12px">slmkit {__version__} · report.json beside this file holds every rank.</p>
</body></html>
"""


def retrieval_table(result: RetrievalResult) -> Table:
    table = Table(
        title=f"retrieval: {len(result.questions)} questions, {result.chunks} chunks",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("method")
    names = result.metric_names()
    for name in names:
        table.add_column(name, justify="right")
    for m in result.methods:
        table.add_row(LABELS.get(m.method, m.method), *(f"{m.values[n]:.3f}" for n in names))
    return table
