"""Dense retrieval over an index folder (MiniLM query vectors, FAISS) and the BM25 baseline
(`bm25s`) over the same chunks, both answering with `Hit`s best first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from slmkit.rag.chunking import Chunk
from slmkit.rag.index import StoredIndex


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk, its number in the index and its score (cosine for dense, BM25 score)."""

    number: int
    chunk: Chunk
    score: float


class DenseRetriever:
    """Questions embedded by MiniLM, searched in the index's FAISS index."""

    name = "dense"

    def __init__(self, index: StoredIndex, embedder: Any) -> None:
        self.index = index
        self.embedder = embedder

    def retrieve(self, questions: list[str], k: int) -> list[list[Hit]]:
        if not questions:
            return []
        vectors, _ = self.embedder.embed(questions)
        found = self.index.search(np.asarray(vectors, dtype=np.float32), k)
        chunks = self.index.chunks
        return [[Hit(i, chunks[i], score) for i, score in row] for row in found]


class Bm25Retriever:
    """BM25 (Lucene variant, English stopwords) over the chunks' embed texts: the baseline."""

    name = "bm25"

    def __init__(self, chunks: list[Chunk]) -> None:
        import bm25s

        self.chunks = chunks
        self.model = bm25s.BM25()
        tokens = bm25s.tokenize(
            [c.embed_text() for c in chunks], stopwords="en", show_progress=False
        )
        self.model.index(tokens, show_progress=False)

    def retrieve(self, questions: list[str], k: int) -> list[list[Hit]]:
        import bm25s

        if not questions:
            return []
        tokens = bm25s.tokenize(questions, stopwords="en", show_progress=False)
        ids, scores = self.model.retrieve(tokens, k=min(k, len(self.chunks)), show_progress=False)
        return [
            [
                Hit(int(i), self.chunks[int(i)], float(s))
                for i, s in zip(row, row_scores, strict=True)
                if s > 0
            ]
            for row, row_scores in zip(ids, scores, strict=True)
        ]
