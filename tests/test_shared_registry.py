"""The model registry on a SQLite file and on a real PostgreSQL server (started on a free port):
the same stories on each, and a promotion on the shared one followed by every gateway."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO
from serve_helpers import ScriptedEngine


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: Any, tmp_path: Path) -> Path | str:
    if request.param == "sqlite":
        return tmp_path / "registry.db"
    return str(request.getfixturevalue("postgres_url"))


def _folders(tmp_path: Path, n: int) -> list[Path]:
    folders = [tmp_path / f"run-{i}" for i in range(n)]
    for folder in folders:
        folder.mkdir()
    return folders


def test_versions_and_alias_moves_read_back_the_same_on_every_backend(
    tmp_path: Path, target: Path | str
) -> None:
    from slmkit.registry.store import Registry, RegistryError

    registry = Registry(target)
    first, second = _folders(tmp_path, 2)
    assert registry.register(first, "run", note="base").id == "v1"
    assert registry.register(second, "export", parent="v1").id == "v2"
    assert registry.register(first, "run", recipe_sha256="abc").id == "v1"  # same path: updated
    registry.set_eval_scores("v2", {"main": 0.75, "main_metric": "fact_recall"})
    registry.promote("v1", "support")
    move = registry.promote("v2", "support")
    assert (move.version, move.previous) == ("v2", "v1")
    assert [(m.version, m.previous) for m in registry.alias_moves("support")] == [
        ("v2", "v1"),
        ("v1", None),
    ]
    newest = registry.versions()
    assert [v.id for v in newest] == ["v2", "v1"]
    assert newest[0].aliases == ["support"] and newest[0].main_score == "fact_recall 0.750"
    assert newest[1].recipe_sha256 == "abc" and newest[1].note == "base"
    assert registry.resolve("@support").path == str(second.resolve())
    with pytest.raises(RegistryError, match="unknown version 'v9'"):
        registry.set_note("v9", "x")
    with pytest.raises(RegistryError, match="unknown alias 'nope'.*aliases: support"):
        registry.resolve("@nope")
    registry.close()


def test_writers_on_two_threads_get_gap_free_ids(tmp_path: Path, target: Path | str) -> None:
    from slmkit.registry.store import Registry

    folders = _folders(tmp_path, 20)
    errors: list[BaseException] = []

    def write(part: list[Path]) -> None:
        registry = Registry(target)  # each writer its own, as two processes would
        try:
            for folder in part:
                registry.register(folder, "model")
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            registry.close()

    threads = [threading.Thread(target=write, args=(folders[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(v.id for v in Registry(target).versions()) == sorted(
        f"v{i}" for i in range(1, 21)
    )


def test_a_promotion_on_the_shared_registry_is_followed_by_every_gateway(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two gateways' alias engines on one PostgreSQL registry; `slm models promote` (another
    process, SLM_REGISTRY set to the URL) moves the alias; both serve the new version, within
    their polling interval."""
    from slmkit.registry.store import Registry
    from slmkit.serve.engines.alias import AliasEngine

    registry = Registry(postgres_url)
    for folder in _folders(tmp_path, 2):
        registry.register(folder, "run")
    registry.promote("v1", "support")

    def build(version: Any) -> ScriptedEngine:
        return ScriptedEngine("support", (f"from {version.id}",))

    engines = [
        AliasEngine("support", "@support", build, registry=Registry(postgres_url), reload_s=0.2)
        for _ in range(2)
    ]
    env = {**os.environ, "SLM_REGISTRY": postgres_url}
    command = [sys.executable, "-m", "slmkit.cli", "models", "promote", "v2", "--as", "support"]

    async def scenario() -> float:
        for engine in engines:
            await engine.start()
        try:
            assert [e.version for e in engines] == ["v1", "v1"]
            done = await asyncio.to_thread(
                subprocess.run, command, env=env, cwd=REPO, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr
            promoted = time.monotonic()
            while any(e.version != "v2" for e in engines):
                assert time.monotonic() - promoted < 30, [e.version for e in engines]
                await asyncio.sleep(0.05)
            return time.monotonic() - promoted
        finally:
            for engine in engines:
                await engine.stop()

    lag = asyncio.run(scenario())
    assert lag >= 0
    assert registry.alias_target("support") == "v2"
    registry.close()


def test_a_registry_url_that_cannot_be_reached_is_one_line(tmp_path: Path) -> None:
    from slmkit.child_process import free_port

    url = f"postgresql://slm:hunter2@127.0.0.1:{free_port()}/registry"
    env = {**os.environ, "SLM_REGISTRY": url}
    done = subprocess.run(
        [sys.executable, "-m", "slmkit.cli", "models", "versions"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "cannot connect to PostgreSQL at 127.0.0.1:" in lines[0], done.stderr
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr
