"""Retrieval-augmented generation: `slm index` (chunk, embed, FAISS), search, a BM25 baseline and
retrieval metrics (recall@k, MRR) for `slm eval --retrieval`."""
