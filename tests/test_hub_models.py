"""Hub models offline: a model in the Hugging Face cache works in every command by its hub id
(`ORG/NAME`, also `@REVISION`) with `HF_HUB_OFFLINE=1`; one that is not cached stops with one
line saying what to run, in `slm train` too. The cache is built here the way the hub client lays it
out (refs/ and snapshots/), from a tiny random model: no download."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import run_slm
from train_helpers import write_jsonl, write_recipe

pytestmark = pytest.mark.slow

REPO_ID = "acme/tiny-chat"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    home = tmp_path_factory.mktemp("hf-home")
    repo = home / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return home


def _offline(home: Path) -> dict[str, str]:
    return {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}


def test_a_cached_hub_model_is_found_by_its_id_and_revision(
    hub_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slmkit.models.resolve import resolve_model

    for name, value in _offline(hub_home).items():
        monkeypatch.setenv(name, value)
    resolved = resolve_model(REPO_ID)
    assert resolved.kind == "hub" and Path(resolved.path).name == COMMIT
    assert (Path(resolved.path) / "config.json").is_file()
    pinned = resolve_model(f"{REPO_ID}@{COMMIT}")
    assert pinned.path == resolved.path and pinned.extra["revision"] == COMMIT


def test_a_cached_hub_model_trains_chats_and_exports_offline(
    hub_home: Path, tmp_path: Path
) -> None:
    env = _offline(hub_home)
    chat = run_slm("chat", REPO_ID, "Hi", "--max-tokens", "4", env=env)
    assert chat.returncode == 0, chat.stderr[-2000:]
    data = write_jsonl(
        tmp_path / "sft.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                ]
            }
        ]
        * 4,
    )
    recipe = {
        "model": REPO_ID,
        "output_dir": str(tmp_path / "run"),
        "data": {"train": [str(data)], "cutoff_len": 64},
        "train": {"max_steps": 1, "batch_size": 2, "save_steps": 10, "report_to": []},
    }
    trained = run_slm("train", str(write_recipe(tmp_path / "r.yaml", recipe)), env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert f'"base_model": "{REPO_ID}"' in manifest  # later stages resolve it through the cache
    exported = run_slm("export", str(tmp_path / "run"), "--quant", "q8_0", "--skip-eval", env=env)
    assert exported.returncode == 0, exported.stderr[-2000:]
    direct = run_slm(
        "export", REPO_ID, "--quant", "q8_0", "--skip-eval", "-o", str(tmp_path / "x"), env=env
    )
    assert direct.returncode == 0, direct.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "x").glob("*.gguf")) == [
        "tiny-chat-f16.gguf",
        "tiny-chat-q8_0.gguf",
    ]


@pytest.mark.parametrize("command", ["chat", "train", "pull"])
def test_a_hub_model_that_is_not_cached_offline_is_one_line_saying_what_to_run(
    command: str, hub_home: Path, tmp_path: Path
) -> None:
    env = _offline(hub_home)
    missing = "acme/not-here"
    if command == "train":
        recipe = {"model": missing, "output_dir": str(tmp_path / "run"), "data": {"train": ["x"]}}
        args = ["train", str(write_recipe(tmp_path / "r.yaml", recipe))]
        (tmp_path / "x").write_text('{"text": "hello"}\n')
    elif command == "chat":
        args = ["chat", missing, "Hi"]
    else:
        args = ["pull", missing]
    result = run_slm(*args, env=env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "HF_HUB_OFFLINE" in lines[0]
    if command != "pull":
        assert f"slm pull {missing}" in lines[0]
