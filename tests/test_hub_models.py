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


def test_pull_downloads_into_the_cache_and_then_works_offline(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from fake_hub import FakeHub

    repo = FakeHub.from_folder(tiny_model_dir)
    repo.files["pytorch_model.bin"] = b"not wanted beside safetensors"
    with FakeHub({"acme/pulled": repo}) as hub:
        env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
        pulled = run_slm("pull", "acme/pulled", env=env)
        assert pulled.returncode == 0, pulled.stderr[-2000:]
        folder = Path(pulled.stdout.strip().splitlines()[-1])
        assert (folder / "model.safetensors").read_bytes() == repo.files["model.safetensors"]
        assert not (folder / "pytorch_model.bin").exists()  # safetensors only
        assert "in the Hugging Face cache" in pulled.stderr
    offline = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    chat = run_slm("chat", "acme/pulled", "Hi", "--max-tokens", "2", env=offline)
    assert chat.returncode == 0, chat.stderr[-2000:]


def test_an_interrupted_pull_resumes_where_it_stopped(tiny_model_dir: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from fake_hub import FakeHub

    repo = FakeHub.from_folder(tiny_model_dir, slow={"model.safetensors"})
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    with FakeHub({"acme/big": repo}) as hub:
        env["HF_ENDPOINT"] = hub.url
        first = subprocess.Popen(
            [sys.executable, "-m", "slmkit.cli", "pull", "acme/big"],
            env={**__import__("os").environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        blobs = tmp_path / "hf" / "hub" / "models--acme--big" / "blobs"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            partial = [p for p in blobs.glob("*.incomplete") if _size(p) > 256 * 1024]
            if partial:
                break
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert partial, "the download never started"
        again = run_slm("pull", "acme/big", env=env)
        assert again.returncode == 0, again.stderr[-2000:]
        ranges = [r for method, path, r in hub.requests if method == "GET" and r]
        assert any(path.endswith("model.safetensors") for _, path, _ in hub.requests)
        assert ranges and int(ranges[-1].split("=")[1].rstrip("-")) > 0  # resumed, not restarted
    folder = Path(again.stdout.strip().splitlines()[-1])
    assert (folder / "model.safetensors").read_bytes() == repo.files["model.safetensors"]


def _size(path: Path) -> int:
    """A file's size; 0 when it is gone (a small file's `.incomplete`, downloaded beside the big
    one, is renamed between the listing and this look)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize(
    ("repo_id", "message"),
    [
        ("acme/gated", "is a gated model: its licence must be accepted on its hub page first"),
        ("acme/nothing", "no model 'acme/nothing' on the hub"),
    ],
)
def test_gated_and_unknown_models_are_one_line_saying_what_to_do(
    repo_id: str, message: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from fake_hub import FakeHub

    repos = {"acme/gated": FakeHub.from_folder(tiny_model_dir, gated=True)}
    with FakeHub(repos) as hub:
        env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
        env["HF_TOKEN"] = ""
        result = run_slm("pull", repo_id, env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert message in lines[0]
    if "gated" in repo_id:
        assert "HF_TOKEN" in lines[0]
