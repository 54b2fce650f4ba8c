"""`slm index` on the shipped Brindlewood policies (examples/rag/docs): a real CLI run builds the
FAISS index with heading paths; `--update` re-embeds only what changed; long sections are cut
into overlapping token windows; bad inputs end in one line naming the path."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_slm
from slmkit.rag.config import IndexSettings
from slmkit.rag.index import (
    CHUNKS,
    FAISS,
    MANIFEST,
    VECTORS,
    build_index,
    load_index,
    update_index,
)

DOCS = REPO / "examples" / "rag" / "docs"
SHIPPED_FILES = 10
SHIPPED_CHUNKS = 28  # one per non-empty section: every section of these short files fits


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("rag-docs") / "docs"
    shutil.copytree(DOCS, copy)
    return copy


@pytest.fixture(scope="module")
def built(docs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    index = tmp_path_factory.mktemp("rag-index") / "index"
    done = run_slm("index", str(docs), "-o", str(index))
    assert done.returncode == 0, done.stderr
    return index, done.stdout


@pytest.fixture(scope="module")
def embedder():
    from slmkit.rag.index import load_embedder

    return load_embedder()


def chunk_rows(index: Path) -> list[dict]:
    return [json.loads(line) for line in (index / CHUNKS).read_text().splitlines()]


def test_index_holds_every_section_with_its_heading_path(built: tuple[Path, str]) -> None:
    index, stdout = built
    assert f"{SHIPPED_FILES} files, {SHIPPED_CHUNKS} chunks (flat)" in stdout
    assert "added 10, changed 0, unchanged 0, removed 0" in stdout
    assert {p.name for p in index.iterdir()} == {MANIFEST, CHUNKS, VECTORS, FAISS}
    manifest = json.loads((index / MANIFEST).read_text())
    assert manifest["kind"] == "flat" and manifest["dimensions"] == 384
    assert sum(f["chunks"] for f in manifest["files"].values()) == SHIPPED_CHUNKS
    rows = chunk_rows(index)
    refund = next(r for r in rows if "41 days of delivery" in r["text"])
    assert refund["source"] == "returns.md"
    assert refund["heading"] == "Returns and refunds > Refund window"
    ground = next(r for r in rows if "$4.90" in r["text"])
    assert ground["heading"] == "Shipping > Delivery options > Wren Ground"
    warranty = next(r for r in rows if "27 months" in r["text"])  # HTML h1 > h2
    assert warranty["source"] == "warranty.html"
    assert warranty["heading"] == "Warranty and repairs > Trailbound Warranty"
    assert not any("Home" in r["text"] or "font-family" in r["text"] for r in rows)  # nav, style
    assert len({(r["source"], r["heading"], r["text"]) for r in rows}) == SHIPPED_CHUNKS
    vectors = np.load(index / VECTORS)
    assert vectors.shape == (SHIPPED_CHUNKS, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_update_of_unchanged_documents_embeds_nothing(
    built: tuple[Path, str], docs: Path, tmp_path: Path
) -> None:
    index = tmp_path / "index"
    shutil.copytree(built[0], index)
    done = run_slm("index", "--update", str(index), str(docs))
    assert done.returncode == 0, done.stderr
    assert "added 0, changed 0, unchanged 10, removed 0; embedded 0 chunks" in done.stdout
    assert (index / VECTORS).read_bytes() == (built[0] / VECTORS).read_bytes()


def test_search_finds_the_passage_of_a_question(built: tuple[Path, str], embedder) -> None:
    from slmkit.rag.search import DenseRetriever

    hits = DenseRetriever(load_index(built[0]), embedder).retrieve(
        ["Which code gives new customers money off?"], 3
    )[0]
    assert hits[0].chunk.source == "discounts.md" and "BRW-TRAIL15" in hits[0].chunk.text
    assert hits[0].score > hits[1].score > hits[2].score


def test_update_embeds_only_added_and_changed_files(
    built: tuple[Path, str], docs: Path, tmp_path: Path, embedder
) -> None:
    index = tmp_path / "index"
    shutil.copytree(built[0], index)
    before = {
        r["source"] + r["text"]: v
        for r, v in zip(chunk_rows(index), np.load(index / VECTORS), strict=True)
    }
    work = tmp_path / "docs"
    shutil.copytree(docs, work)
    gift = work / "gift-cards.md"
    gift.write_text(gift.read_text().replace("1,000 days", "1,200 days"))
    (work / "rentals.md").write_text(
        "# Rentals\n\n## Tents\n\nTents can be rented for $9 a night.\n"
    )
    (work / "orders.txt").unlink()
    report = update_index(index, [work], embedder=embedder)
    assert report.counts == {"added": 1, "changed": 1, "unchanged": 8, "removed": 1}
    assert report.embedded == 2  # gift-cards.md (1 chunk) + rentals.md (1), nothing else
    rows = chunk_rows(index)
    assert {r["source"] for r in rows} == {*json.loads((index / MANIFEST).read_text())["files"]}
    assert "orders.txt" not in {r["source"] for r in rows}
    assert any("1,200 days" in r["text"] for r in rows)
    assert not any("1,000 days" in r["text"] for r in rows)
    rental = next(r for r in rows if r["source"] == "rentals.md")
    assert rental["heading"] == "Rentals > Tents"
    vectors = np.load(index / VECTORS)
    kept = [
        (r, v)
        for r, v in zip(rows, vectors, strict=True)
        if r["source"] not in ("gift-cards.md", "rentals.md")
    ]
    assert len(kept) == SHIPPED_CHUNKS - 2  # orders.txt's chunk and the old gift card chunk left
    for row, vector in kept:  # carried over bit for bit, not embedded again
        assert np.array_equal(vector, before[row["source"] + row["text"]])
    assert load_index(index).faiss_index.ntotal == len(rows)


def test_long_sections_are_cut_into_overlapping_windows(tmp_path: Path, embedder) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    sentences = [
        f"Rule {i}: a parcel sent to zone {i} travels {i + 2} days by road." for i in range(30)
    ]
    (docs / "zones.md").write_text("# Zones\n\n## Delivery times\n\n" + " ".join(sentences) + "\n")
    settings = IndexSettings(chunk_tokens=48, overlap_tokens=12)
    report = build_index([docs], tmp_path / "index", settings, embedder=embedder)
    rows = chunk_rows(tmp_path / "index")
    assert report.chunks == len(rows) >= 6
    assert all(r["heading"] == "Zones > Delivery times" for r in rows)
    assert all(r["tokens"] <= 48 for r in rows)
    for before, after in itertools.pairwise(rows):
        opening = " ".join(after["text"].split()[:2])
        assert opening in before["text"], (before["text"], after["text"])  # the overlap
    for sentence in sentences:  # cuts fall at sentence ends: every rule is whole in some chunk
        assert any(sentence in r["text"] for r in rows), sentence


def test_ivf_index_on_request(built: tuple[Path, str], tmp_path: Path, embedder) -> None:
    settings = IndexSettings(ivf=True)
    report = build_index([DOCS], tmp_path / "ivf", settings, embedder=embedder)
    manifest = json.loads((tmp_path / "ivf" / MANIFEST).read_text())
    assert report.kind == manifest["kind"] == "ivf" and manifest["nlist"] >= 1
    from slmkit.rag.search import DenseRetriever

    hits = DenseRetriever(load_index(tmp_path / "ivf"), embedder).retrieve(
        ["Do gift cards expire?"], 1
    )
    assert hits[0][0].chunk.source == "gift-cards.md"


def one_line_error(args: list[str]) -> str:
    done = run_slm(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_bad_inputs_are_one_line_errors(built: tuple[Path, str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert f"{missing}: no such file or folder" in one_line_error(
        ["index", str(missing), "-o", str(tmp_path / "i")]
    )
    picture = tmp_path / "logo.png"
    picture.write_bytes(b"\x89PNG")
    line = one_line_error(["index", str(picture), "-o", str(tmp_path / "i")])
    assert f"{picture}: unsupported file type '.png'" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.docx").write_text("not indexed")
    assert "no documents to index" in one_line_error(
        ["index", str(empty), "-o", str(tmp_path / "i")]
    )
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "draft.md").write_text("# Draft\n\n")
    assert "every document is empty" in one_line_error(
        ["index", str(blank), "-o", str(tmp_path / "i")]
    )
    pdf = tmp_path / "manual.pdf"
    pdf.write_bytes(b"%PDF-1.4")
    assert "pip install pypdf" in one_line_error(["index", str(pdf), "-o", str(tmp_path / "i")])
    corrupt = tmp_path / "corrupt"
    shutil.copytree(built[0], corrupt)
    (corrupt / FAISS).write_bytes(b"garbage")
    line = one_line_error(["index", "--update", str(corrupt), str(DOCS)])
    assert f"{corrupt}: corrupt index: {FAISS} is not a readable FAISS index" in line
    line = one_line_error(["index", str(DOCS), "-o", str(tmp_path / "i"), "--chunk-tokens", "8"])
    assert "--chunk-tokens" in line
    assert "not both or none" in one_line_error(["index", str(DOCS)])
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert "holds no index" in one_line_error(["index", str(DOCS), "-o", str(taken)])
