"""Settings of `slm index` and of a served model's `rag:` entry. Every default lives here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from slmkit.config import StrictModel

# the longest input all-MiniLM-L6-v2 embeds (longer text is cut there)
EMBED_MAX_TOKENS = 256


class IndexSettings(StrictModel):
    """How `slm index` cuts documents into chunks and which FAISS index holds their vectors."""

    chunk_tokens: int = Field(
        default=192,
        ge=16,
        le=EMBED_MAX_TOKENS - 32,
        description="Most tokens per chunk (MiniLM tokenizer); room is left for the heading path.",
    )
    overlap_tokens: int = Field(
        default=32,
        ge=0,
        description="Tokens a chunk repeats from the end of the one before it (same section only).",
    )
    ivf: bool = Field(
        default=False,
        description="Use an approximate IVF index even for a small corpus (default: exact IndexFlatIP).",
    )
    ivf_min_chunks: int = Field(
        default=50_000,
        ge=1,
        description="From this many chunks on, an IVF index is built instead of the exact one.",
    )
    batch_size: int = Field(default=32, ge=1, le=1024, description="Chunks embedded per batch.")

    @model_validator(mode="after")
    def _overlap_below_half(self) -> IndexSettings:
        if self.overlap_tokens * 2 > self.chunk_tokens:
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be at most half of chunk_tokens ({self.chunk_tokens})"
            )
        return self


class RagSettings(StrictModel):
    """A served model's retrieval: passages from an `slm index` folder injected as a system message."""

    index: Path = Field(description="Index folder written by `slm index`.")
    top_k: int = Field(default=4, ge=1, le=50, description="Passages retrieved per request.")
    max_tokens: int = Field(
        default=600,
        ge=16,
        description="Most tokens (MiniLM tokenizer) of passages injected; the last one is cut to fit.",
    )
    min_score: float = Field(
        default=0.0,
        ge=-1,
        le=1,
        description="Passages whose cosine similarity to the question is below this are left out.",
    )
    instructions: str = Field(
        default="Answer the user's question using the passages below from our documents. "
        "If they do not contain the answer, say that you do not know.",
        description="Text put before the passages in the injected system message.",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """`rag: PATH` means `rag: {index: PATH}`."""
        if isinstance(data, (str, Path)):
            return {"index": data}
        return data
