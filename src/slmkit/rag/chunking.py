"""Sections to chunks of at most `chunk_tokens` tokens (the embedder's tokenizer), with overlap.

A section that fits is one chunk. A longer one is cut into windows that end at a sentence end
where one is near, else at a word boundary; each window starts `overlap_tokens` before the end
of the one before it (at a word start), so the text around a cut is in both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from slmkit.rag.config import IndexSettings
from slmkit.rag.documents import Document

SENTENCE_END = ".!?:;"
LEADING = ",;:.!?)]} \t\n"  # left off the start of a later window (it starts mid-sentence)
SENTENCE_SEARCH = 0.4  # look for a sentence end in the last 40% of a window


@dataclass(frozen=True)
class Chunk:
    """One retrievable passage and where it came from."""

    source: str
    heading: str
    text: str
    sha256: str  # of the source file when it was indexed
    tokens: int

    def embed_text(self) -> str:
        """What is embedded (and what BM25 sees): the heading path gives the passage its context."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Chunk:
        return cls(**{k: data[k] for k in ("source", "heading", "text", "sha256", "tokens")})


def chunk_document(document: Document, tokenizer: Any, settings: IndexSettings) -> list[Chunk]:
    chunks = []
    for section in document.sections:
        for text, tokens in split_text(section.text, tokenizer, settings):
            chunks.append(Chunk(document.source, section.heading, text, document.sha256, tokens))
    return chunks


def split_text(text: str, tokenizer: Any, settings: IndexSettings) -> list[tuple[str, int]]:
    """(chunk text, tokens) windows over `text`."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets: list[tuple[int, int]] = encoding["offset_mapping"]
    words: list[int | None] = encoding.word_ids()
    n = len(offsets)
    if n <= settings.chunk_tokens:
        return [(text.strip(), n)] if n else []
    windows: list[tuple[str, int]] = []
    start = 0
    while True:
        end = _window_end(text, offsets, words, start, settings.chunk_tokens)
        piece = text[offsets[start][0] : offsets[end - 1][1]]
        windows.append(
            (piece.strip() if not windows else piece.lstrip(LEADING).rstrip(), end - start)
        )
        if end >= n:
            return windows
        nearest = max(start + 1, end - settings.overlap_tokens)
        snapped = _word_start(words, nearest)
        start = snapped if snapped > start else nearest


def _window_end(
    text: str, offsets: list[tuple[int, int]], words: list[int | None], start: int, size: int
) -> int:
    """Where a window from `start` ends (exclusive): the last sentence end or line break in its
    tail, else the last word boundary, else `start + size`."""
    limit = start + size
    if limit >= len(offsets):
        return len(offsets)
    earliest = limit - int(size * SENTENCE_SEARCH)
    for end in range(limit, earliest, -1):
        last_char = text[offsets[end - 1][1] - 1]
        gap = text[offsets[end - 1][1] : offsets[end][0]]
        if (last_char in SENTENCE_END and gap) or "\n" in gap:
            return end
    for end in range(limit, start + 1, -1):
        if words[end] != words[end - 1]:
            return end
    return limit


def _word_start(words: list[int | None], index: int) -> int:
    """`index` moved back to the first token of its word (a word may be several word pieces)."""
    while index > 0 and words[index] is not None and words[index] == words[index - 1]:
        index -= 1
    return index
