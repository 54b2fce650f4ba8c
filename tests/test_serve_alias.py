"""A served registry alias (`ref: "@support"`) follows `slm models promote` while serving: a stream
from the old version completes, later requests answer from the new one, and the audit log, /health,
/v1/models and /metrics say which version answered. Real `slm serve`, real llama-server children,
the embedded GGUF as v1 and a second file of it as v2."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import run_slm
from serve_helpers import ServerProcess, needs_llama_server
from slmkit.registry.store import Registry

pytestmark = [needs_llama_server, pytest.mark.slow]

EOS_BAN = {"0": -100, "1": -100, "2": -100}  # <|endoftext|>, <|im_start|>, <|im_end|>: run long
STREAM_TOKENS = 400  # outlasts the start of v2's llama-server (reload_s + ~1-2 s)


def _second_file(gguf: Path, folder: Path) -> Path:
    """Another path holding the same weights (a hard link where the file system allows it)."""
    target = folder / "support-v2.gguf"
    try:
        os.link(gguf, target)
    except OSError:
        shutil.copyfile(gguf, target)
    return target


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slmkit.models.embedded import embedded_gguf_path

    home = tmp_path_factory.mktemp("alias-home")
    registry = Registry(home / "registry.db")
    gguf = embedded_gguf_path()
    assert registry.register(gguf, "export", note="embedded").id == "v1"
    assert registry.register(_second_file(gguf, home), "export", parent="v1").id == "v2"
    registry.promote("v1", "support")
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[ServerProcess]:
    config = {
        "models": [{"id": "support", "ref": "@support", "reload_s": 0.3}],
        "llamacpp": {"ctx_size": 2048, "parallel": 2},
        "repetition": {"enabled": False},  # the long stream below must not be cut as a loop
    }
    with ServerProcess([], config=config, env={"SLM_HOME": str(home)}) as srv:
        yield srv


def _health(server: ServerProcess) -> dict[str, Any]:
    engines = server.get("/health").json()["engines"]
    return next(e for e in engines if e.get("id") == "support")


def _audit_versions(home: Path, ids: list[str]) -> list[tuple[str, int, int]]:
    """The version, stream flag and status of these requests, in their order."""
    deadline = time.monotonic() + 30
    marks = ",".join("?" for _ in ids)
    rows: dict[str, tuple[str, int, int]] = {}
    while time.monotonic() < deadline:  # the audit writer is a background thread
        with sqlite3.connect(home / "serve" / "audit.db") as conn:
            found = conn.execute(
                f"SELECT id, version, stream, status FROM requests WHERE id IN ({marks})", ids
            ).fetchall()
        rows = {row[0]: row[1:] for row in found}
        if len(rows) == len(ids):
            break
        time.sleep(0.2)
    return [rows[i] for i in ids if i in rows]


def _serving(server: ServerProcess, home: Path, version: str) -> None:
    """Point the alias at `version` (as a rollback would) and wait until the server serves it
    alone: the tests below move the alias, and each starts from where it needs it."""
    registry = Registry(home / "registry.db")
    if registry.alias_target("support") != version:
        registry.promote(version, "support")
    deadline = time.monotonic() + 90
    while (h := _health(server))["version"] != version or h["draining"]:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)


def test_promote_while_streaming_keeps_the_stream_and_switches(
    server: ServerProcess, home: Path
) -> None:
    _serving(server, home, "v1")
    client = server.client()
    assert [(m.id, m.model_extra.get("version")) for m in client.models.list().data] == [
        ("support", "v1")
    ]
    health = _health(server)
    assert (health["engine"], health["alias"], health["version"]) == ("alias", "support", "v1")

    stream = client.chat.completions.create(
        model="support",
        messages=[{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        max_tokens=STREAM_TOKENS,
        temperature=0.8,
        seed=7,
        logit_bias=EOS_BAN,
        stream=True,
    )
    chunks = iter(stream)
    first = next(chunks)  # the stream is in flight on v1
    assert first.choices[0].delta is not None

    rest: list[Any] = []
    reader = threading.Thread(target=lambda: rest.extend(chunks))
    reader.start()
    move = Registry(home / "registry.db").promote("v2", "support")  # as `slm models promote`
    assert (move.version, move.previous) == ("v2", "v1")

    deadline = time.monotonic() + 90
    while _health(server)["version"] != "v2":
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    during = _health(server)
    assert reader.is_alive() and during["draining"] == ["v1"], "the stream ended before the swap"

    after = client.chat.completions.create(
        model="support", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
    )
    assert after.choices[0].message.content
    reader.join(timeout=120)
    assert not reader.is_alive()
    text = first.choices[0].delta.content or ""
    text += "".join(c.choices[0].delta.content or "" for c in rest if c.choices)
    finish = [c.choices[0].finish_reason for c in rest if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"] and len(text) > STREAM_TOKENS  # every token arrived

    assert _audit_versions(home, [first.id, after.id]) == [("v1", 1, 200), ("v2", 0, 200)]
    assert [(m.id, m.model_extra.get("version")) for m in client.models.list().data] == [
        ("support", "v2")
    ]
    deadline = time.monotonic() + 30
    while _health(server)["draining"]:  # the old engine stops once its stream is done
        assert time.monotonic() < deadline
        time.sleep(0.2)
    metrics = server.get("/metrics").text.splitlines()
    series = [line for line in metrics if line.startswith("slm_alias_version_info{")]
    assert series == ['slm_alias_version_info{model="support",version="v2"} 1.0']


def test_a_version_that_cannot_start_leaves_the_old_one_serving(
    server: ServerProcess, home: Path
) -> None:
    _serving(server, home, "v2")
    broken = home / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(64))  # a header and nothing else: llama-server refuses it
    registry = Registry(home / "registry.db")
    version = registry.register(broken, "export").id
    registry.promote(version, "support")
    deadline = time.monotonic() + 90
    while _health(server).get("skipped_version") != version:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    assert _health(server)["version"] == "v2" and f"version {version} did not start" in server.log()
    answer = server.client().chat.completions.create(
        model="support", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4
    )
    assert answer.choices[0].message.content


def test_unknown_alias_stops_the_start_with_one_line(tmp_path: Path) -> None:
    import yaml

    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"models": [{"id": "support", "ref": "@nowhere"}]}))
    proc = run_slm("serve", "--config", str(config), "--port", "0", timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert "unknown alias 'nowhere'" in lines[-1] and "registry.db" in lines[-1]


def test_alias_entries_validate() -> None:
    from pydantic import ValidationError

    from slmkit.serve.model_config import ModelEntry

    assert ModelEntry(id="support", ref="@support").follows_alias
    assert not ModelEntry(id="fixed", ref="@v3").follows_alias  # a version never moves
    with pytest.raises(ValidationError, match="served by one engine: drop `replicas`"):
        ModelEntry(id="support", ref="@support", replicas=2)
    with pytest.raises(ValidationError, match="reload_s"):
        ModelEntry(id="support", ref="@support", reload_s=0)


def test_a_retired_version_with_a_hung_request_is_stopped_after_its_time(tmp_path: Path) -> None:
    """The old engine waits for its requests, but not for ever: one that hangs past
    `retire_after_s` (twice the request timeout in `slm serve`) no longer keeps it running."""
    import asyncio

    from slmkit.serve.engines.alias import AliasEngine, Serving

    class Old:
        restarts = 0
        stopped = False

        async def stop(self) -> None:
            self.stopped = True

    old = Old()
    alias = AliasEngine(
        "support",
        "@support",
        lambda version: old,  # type: ignore[arg-type,return-value]
        registry=Registry(tmp_path / "registry.db"),
        retire_after_s=0.05,
    )
    asyncio.run(alias._retire(Serving("v1", old, in_flight=1)))  # type: ignore[arg-type]
    assert old.stopped and alias.retired == []
