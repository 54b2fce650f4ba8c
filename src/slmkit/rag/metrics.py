"""Retrieval metrics over a question -> passage set: recall@k and MRR.

A question set is JSONL, one `{"question": ..., "source": "file.md", "contains": "phrase"}` per
line: a retrieved chunk is a hit when it comes from that source file and contains the phrase
(case-insensitive). Every question must have such a chunk in the index, or the set and the
index do not belong together (an error, not a silent zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from slmkit.data.readers import json_objects
from slmkit.errors import DataError
from slmkit.rag.chunking import Chunk
from slmkit.rag.search import Hit

FIELDS = ("question", "source", "contains")


@dataclass(frozen=True)
class RetrievalQuestion:
    line: int
    question: str
    source: str
    contains: str

    def is_hit(self, chunk: Chunk) -> bool:
        same_file = chunk.source == self.source or chunk.source.endswith("/" + self.source)
        return same_file and self.contains.lower() in chunk.text.lower()


class Retriever(Protocol):
    name: str

    def retrieve(self, questions: list[str], k: int) -> list[list[Hit]]: ...


def load_questions(path: Path) -> list[RetrievalQuestion]:
    if not path.is_file():
        raise DataError(f"{path}: no such question set")
    questions = []
    for number, record in json_objects(path, path.read_text(encoding="utf-8"), DataError):
        for name in FIELDS:
            if not isinstance(record.get(name), str) or not record[name].strip():
                raise DataError(f"{path}:{number}: field {name!r} must be a non-empty string")
        questions.append(
            RetrievalQuestion(number, record["question"], record["source"], record["contains"])
        )
    if not questions:
        raise DataError(f"{path}: no questions in it")
    return questions


def check_answerable(questions: list[RetrievalQuestion], chunks: list[Chunk], path: Path) -> None:
    """Each question's passage exists in the index (else recall would be wrong, not low)."""
    for q in questions:
        if not any(q.is_hit(c) for c in chunks):
            raise DataError(
                f"{path}:{q.line}: no chunk of {q.source!r} in the index contains {q.contains!r}"
            )


def first_hit_ranks(
    retriever: Retriever, questions: list[RetrievalQuestion], depth: int
) -> list[tuple[int | None, list[Hit]]]:
    """Per question: the 1-based rank of the first hit within `depth` (None: not found), and the hits."""
    results = retriever.retrieve([q.question for q in questions], depth)
    ranks = []
    for q, hits in zip(questions, results, strict=True):
        rank = next((r for r, hit in enumerate(hits, start=1) if q.is_hit(hit.chunk)), None)
        ranks.append((rank, hits))
    return ranks


def recall_at(ranks: list[int | None], k: int) -> float:
    return sum(r is not None and r <= k for r in ranks) / len(ranks)


def mean_reciprocal_rank(ranks: list[int | None]) -> float:
    return sum(1.0 / r for r in ranks if r is not None) / len(ranks)
