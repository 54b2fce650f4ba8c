"""`slm eval --retrieval`: recall@k and MRR of the shipped question set (examples/rag) on an index of
the shipped policies, dense (MiniLM + FAISS) against BM25 on the same chunks, in report.json,
report.html and the terminal table; alone or beside the models' answers in one report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, run_slm
from serve_helpers import needs_llama_server
from slmkit.rag.metrics import mean_reciprocal_rank, recall_at

EXAMPLE = REPO / "examples" / "rag"
QUESTIONS = EXAMPLE / "questions.jsonl"
# measured on the shipped set (34 questions): recall@4 dense 0.971, BM25 0.676; floors leave a margin
DENSE_RECALL_AT_4 = 0.9
BM25_RECALL_AT_4 = 0.55


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slmkit.rag.config import IndexSettings
    from slmkit.rag.index import build_index

    path = tmp_path_factory.mktemp("rag-eval") / "index"
    build_index([EXAMPLE / "docs"], path, IndexSettings())  # `slm index` itself: test_rag_index.py
    return path


def test_metrics_arithmetic() -> None:
    ranks = [1, 2, None, 4, 1]
    assert recall_at(ranks, 1) == pytest.approx(2 / 5)
    assert recall_at(ranks, 4) == pytest.approx(4 / 5)
    assert mean_reciprocal_rank(ranks) == pytest.approx((1 + 0.5 + 0 + 0.25 + 1) / 5)


def test_retrieval_report_dense_against_bm25(index: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = run_slm("eval", "--retrieval", str(QUESTIONS), "--index", str(index), "-o", str(out))
    assert done.returncode == 0, done.stderr
    data = json.loads((out / "report.json").read_text())["retrieval"]
    assert data["n_questions"] == 34 and data["chunks"] == 28 and data["k"] == [1, 4]
    dense, bm25 = data["methods"]["dense"], data["methods"]["bm25"]
    assert dense["recall@4"] >= DENSE_RECALL_AT_4 and bm25["recall@4"] >= BM25_RECALL_AT_4
    for m in (dense, bm25):
        assert 0 < m["recall@1"] <= m["mrr"] <= 1 and m["recall@1"] <= m["recall@4"]
    items = data["items"]
    ranks = [i["rank"]["dense"] for i in items]
    assert dense["recall@1"] == pytest.approx(sum(r == 1 for r in ranks) / len(ranks))
    assert dense["mrr"] == pytest.approx(sum(1 / r for r in ranks if r) / len(ranks))
    html = (out / "report.html").read_text()
    assert (
        "<h2>Retrieval</h2>" in html and "BM25 (bm25s)" in html and "dense (MiniLM + FAISS)" in html
    )
    assert f"{dense['recall@4']:.3f}" in html and f"{bm25['mrr']:.3f}" in html
    table = done.stdout
    assert "recall@1" in table and "recall@4" in table and "mrr" in table
    assert f"{dense['mrr']:.3f}" in table and f"{bm25['recall@1']:.3f}" in table


def test_question_set_must_fit_the_index(index: Path, tmp_path: Path) -> None:
    bad = tmp_path / "q.jsonl"
    bad.write_text(
        json.dumps({"question": "Refunds?", "source": "returns.md", "contains": "41 days"})
        + "\n"
        + json.dumps({"question": "Rentals?", "source": "rentals.md", "contains": "$9"})
        + "\n"
    )
    done = run_slm(
        "eval", "--retrieval", str(bad), "--index", str(index), "-o", str(tmp_path / "r")
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"error: {bad}:2: no chunk of 'rentals.md' in the index contains '$9'"
    )
    bad.write_text('{"question": "Refunds?", "source": "returns.md"}\n')
    done = run_slm(
        "eval", "--retrieval", str(bad), "--index", str(index), "-o", str(tmp_path / "r")
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {bad}:1: field 'contains' must be a non-empty string"
    done = run_slm("eval", "--retrieval", str(QUESTIONS))
    assert (
        done.returncode == 2
        and "--retrieval QUESTIONS and --index INDEX go together" in done.stderr
    )


@needs_llama_server
def test_retrieval_beside_the_models_in_one_report(index: Path, tmp_path: Path) -> None:
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"prompt": "Say hi.", "reference": "Hi!"}) + "\n")
    out = tmp_path / "report"
    done = run_slm(
        "eval", "--models", "base=default", "--data", str(data), "--max-tokens", "4",
        "--no-similarity", "--retrieval", str(QUESTIONS), "--index", str(index), "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["base"]
    assert report["retrieval"]["methods"]["dense"]["recall@4"] >= DENSE_RECALL_AT_4
    assert "<h2>Retrieval</h2>" in (out / "report.html").read_text()
    assert "dense (MiniLM + FAISS)" in done.stdout
