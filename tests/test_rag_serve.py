"""RAG end to end: the Brindlewood policies (facts no model was trained on) -> `slm index` -> a
real `slm serve` whose `default` model has `rag:`. The answer uses the fact, the response names
the source file (`sources`, in the body and in a stream's first chunk), and the audit row stores
it. The same model without `rag:` does not know the fact. A missing or corrupt index stops the
start-up with one line naming its path; a bad `rag:` setting names its field."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import REPO, run_slm
from serve_helpers import ServerProcess, needs_llama_server
from slmkit.child_process import free_port

DOCS = REPO / "examples" / "rag" / "docs"
QUESTION = "What is the restocking fee for opened items?"
FACT = "$6.75"  # checked: at temperature 0 the embedded model says it with the passage, 10% without


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rag-serve") / "index"
    done = run_slm("index", str(DOCS), "-o", str(path))
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rag-serve-home")


@pytest.fixture(scope="module")
def server(index: Path, home: Path):
    config = {
        "llamacpp": {"ctx_size": 2048, "parallel": 2, "threads": 1},
        "models": [
            {"id": "default", "ref": "default", "rag": {"index": str(index), "top_k": 2}},
            {"id": "plain", "ref": "default"},
        ],
    }
    with ServerProcess([], config=config, env={"SLM_HOME": str(home)}) as srv:
        yield srv


def audit_sources(home: Path, request_id: str) -> list[dict] | None:
    """The audit row's `sources` (the writer thread may take a moment)."""
    db = home / "serve" / "audit.db"
    for _ in range(50):
        if db.exists():
            with sqlite3.connect(db) as conn:
                row = conn.execute(
                    "SELECT sources FROM requests WHERE id = ?", (request_id,)
                ).fetchone()
            if row is not None:
                return json.loads(row[0]) if row[0] else None
        time.sleep(0.1)
    raise AssertionError(f"no audit row for {request_id}")


def ask(server: ServerProcess, model: str):
    return server.client().chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=48,
    )


@needs_llama_server
def test_answer_uses_the_documents_and_names_its_source(server: ServerProcess, home: Path) -> None:
    answer = ask(server, "default")
    sources = answer.model_extra["sources"]
    assert sources[0]["source"] == "returns.md"
    assert sources[0]["heading"] == "Returns and refunds > Restocking fee"
    assert 0 < sources[0]["score"] <= 1 and len(sources) == 2
    assert FACT in answer.choices[0].message.content
    assert audit_sources(home, answer.id) == sources


@needs_llama_server
def test_without_rag_the_model_does_not_know_the_fact(server: ServerProcess, home: Path) -> None:
    answer = ask(server, "plain")
    assert FACT not in (answer.choices[0].message.content or "")
    assert "sources" not in (answer.model_extra or {})
    assert audit_sources(home, answer.id) is None


@needs_llama_server
def test_stream_carries_the_sources_in_its_first_chunk(server: ServerProcess, home: Path) -> None:
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": "Do Brindlewood gift cards expire?"}],
        "temperature": 0,
        "max_tokens": 24,
        "stream": True,
    }
    with httpx.stream(
        "POST", server.base_url + "/v1/chat/completions", json=body, timeout=120
    ) as reply:
        assert reply.status_code == 200
        events = [
            json.loads(line[len("data: ") :])
            for line in reply.iter_lines()
            if line.startswith("data: {")
        ]
    assert events[0]["sources"][0]["source"] == "gift-cards.md"
    assert all("sources" not in e for e in events[1:])
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert audit_sources(home, events[0]["id"]) == events[0]["sources"]


@needs_llama_server
def test_completions_are_not_augmented(server: ServerProcess) -> None:
    reply = server.post(
        "/v1/completions",
        {"model": "default", "prompt": QUESTION, "max_tokens": 4, "temperature": 0},
    )
    assert reply.status_code == 200 and "sources" not in reply.json()


def start_error(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    done = run_slm("serve", "--config", str(path), "--port", str(free_port()), timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_missing_or_corrupt_index_stops_the_start(tmp_path: Path, index: Path) -> None:
    missing = tmp_path / "no-index"
    entry = {"id": "default", "ref": "default", "rag": str(missing)}  # the `rag: PATH` shorthand
    line = start_error(tmp_path, {"models": [entry]})
    assert f"model 'default': rag index {missing}: no index folder there" in line
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for part in index.iterdir():
        (corrupt / part.name).write_bytes(part.read_bytes())
    (corrupt / "chunks.jsonl").write_text('{"source": "a.md"}\n')
    line = start_error(tmp_path, {"models": [{**entry, "rag": {"index": str(corrupt)}}]})
    assert f"{corrupt}: corrupt index: chunks.jsonl:1 is not a chunk record" in line


def test_bad_rag_settings_name_the_field(tmp_path: Path) -> None:
    entry = {"id": "default", "ref": "default", "rag": {"index": "x", "top_k": 0}}
    assert "models.0.rag.top_k" in start_error(tmp_path, {"models": [entry]})
    entry = {"id": "default", "ref": "default", "rag": {"index": "x", "k": 3}}
    assert "models.0.rag.k" in start_error(tmp_path, {"models": [entry]})
