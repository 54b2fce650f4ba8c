"""Retrieval benchmark: recall@k and MRR of the shipped question set (examples/rag) on an index of
the shipped policies, dense (MiniLM + FAISS) against the BM25 baseline measured in the same run,
plus the time to build the index and per-question retrieval latency of both.

    python benchmarks/bench_rag.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine_line, write_section

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rag"
REPEATS = 5


def per_question_ms(retriever: object, questions: list[str], depth: int) -> float:
    started = time.perf_counter()
    for _ in range(REPEATS):
        for question in questions:  # one at a time, as the gateway asks
            retriever.retrieve([question], depth)  # type: ignore[attr-defined]
    return (time.perf_counter() - started) * 1000 / (REPEATS * len(questions))


def main() -> None:
    from slmkit.evaluate.config import RetrievalSettings
    from slmkit.evaluate.retrieval import evaluate_retrieval
    from slmkit.rag.config import IndexSettings
    from slmkit.rag.index import build_index, load_embedder, load_index
    from slmkit.rag.metrics import load_questions
    from slmkit.rag.search import Bm25Retriever, DenseRetriever

    embedder = load_embedder()
    with tempfile.TemporaryDirectory() as tmp:
        index_dir = Path(tmp) / "index"
        report = build_index([EXAMPLE / "docs"], index_dir, IndexSettings(), embedder=embedder)
        settings = RetrievalSettings(questions=EXAMPLE / "questions.jsonl", index=index_dir)
        result = evaluate_retrieval(settings, embedder=embedder)
        index = load_index(index_dir)
        questions = [q.question for q in load_questions(settings.questions)]
        latency = {
            "dense": per_question_ms(DenseRetriever(index, embedder), questions, settings.depth),
            "bm25": per_question_ms(Bm25Retriever(index.chunks), questions, settings.depth),
        }
    names = result.metric_names()
    values = {m.method: m.values for m in result.methods}
    rows = [
        f"| {label} | "
        + " | ".join(f"{values[method][n]:.3f}" for n in names)
        + f" | {latency[method]:.2f} |"
        for method, label in (("dense", "dense (MiniLM + FAISS flat)"), ("bm25", "BM25 (bm25s)"))
    ]
    ratio = {n: values["dense"][n] / values["bm25"][n] for n in names if values["bm25"][n]}
    markdown = "\n".join(
        [
            "## Retrieval (`benchmarks/bench_rag.py`, `slm eval --retrieval`)",
            "",
            f"Machine: {machine_line()}. Corpus: examples/rag/docs ({report.files} files, "
            f"{report.chunks} chunks of at most {IndexSettings().chunk_tokens} MiniLM tokens; "
            f"index built in {report.seconds:.1f} s with the embedder already loaded). Questions: "
            f"examples/rag/questions.jsonl ({len(questions)}, worded unlike the documents); "
            "a hit is a chunk of the named file that contains the named phrase. BM25 ranks the "
            "same chunks (heading path + text) in the same run.",
            "",
            "| method | " + " | ".join(names) + " | ms / question |",
            "|---|" + "---:|" * (len(names) + 1),
            *rows,
            "",
            "Dense / BM25: "
            + ", ".join(f"{n} ×{r:.2f}" for n, r in ratio.items())
            + ". Dense latency includes embedding the question with MiniLM on the CPU.",
        ]
    )
    print(markdown)
    write_section("rag", markdown)


if __name__ == "__main__":
    main()
