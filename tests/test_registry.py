"""The model registry: versions with lineage and hashes, aliases with history, two processes
registering at once, `slm train` / `slm eval` recording into it, and `slm models` over it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, run_slm
from eval_helpers import FACT_ROWS
from slmkit.errors import ModelNotFoundError
from slmkit.registry.hooks import register_export, register_path, register_run
from slmkit.registry.store import Registry, RegistryError
from train_helpers import DEMO, read_jsonl, tiny_recipe, write_jsonl


def _run_folder(folder: Path, data: Path, base: str) -> Path:
    """A finished run folder as `slm train` leaves it (manifest with base, recipe and data)."""
    from slmkit.recipe import Recipe
    from slmkit.train import runfolder

    recipe = Recipe(model=base, data={"train": [str(data)]})
    manifest = runfolder.build_manifest(recipe, base, base, [data])
    folder.mkdir(parents=True)
    runfolder.write_json(folder / runfolder.MANIFEST, {**manifest, "status": "finished"})
    return folder


def test_runs_and_exports_register_with_lineage_and_update_in_place(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    data = write_jsonl(tmp_path / "train.jsonl", FACT_ROWS)
    run = register_run(_run_folder(tmp_path / "run-a", data, "default"), registry)
    manifest = json.loads((tmp_path / "run-a" / "manifest.json").read_text())
    assert (run.id, run.kind, run.parent) == ("v1", "run", None)
    assert run.recipe_sha256 == manifest["recipe_sha256"] and len(run.recipe_sha256) == 64
    assert run.data_files == {str(data): manifest["data_files"][str(data)]}

    gguf = tmp_path / "export-a" / "run-a-q8_0.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(60))
    export = register_export(gguf.parent, str(tmp_path / "run-a"), [gguf], registry)
    assert (export.id, export.kind, export.parent) == ("v2", "export", "v1")
    assert export.export_files == [{"name": "run-a-q8_0.gguf", "size_bytes": 64}]

    # a second run on top of the first (its base is `@v1`), then the first run trained again
    child = register_run(_run_folder(tmp_path / "run-b", data, "@v1"), registry)
    assert (child.id, child.parent) == ("v3", "v1")
    again = register_run(tmp_path / "run-a", registry)
    assert again.id == "v1" and again.created == run.created and again.updated > run.updated
    assert [v.id for v in registry.versions()] == ["v3", "v2", "v1"]

    noted = register_path(gguf.parent, "first export", registry)
    assert (noted.id, noted.note, noted.parent) == ("v2", "first export", "v1")
    assert registry.get("v2").export_files == export.export_files  # a note keeps the rest


def test_aliases_move_with_history_and_resolve(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        registry.register(tmp_path / name, "model")
    assert registry.promote("v1", "support").previous is None
    assert registry.promote("v2", "support").previous == "v1"
    assert registry.alias_target("support") == "v2"
    assert [(m.version, m.previous) for m in registry.alias_moves("support")] == [
        ("v2", "v1"),
        ("v1", None),
    ]
    assert registry.resolve("@support").path == str(tmp_path / "b")
    assert registry.resolve("@v1").path == str(tmp_path / "a")
    assert registry.get("v2").aliases == ["support"] and registry.get("v1").aliases == []

    for bad in ("v0", "3", "vx", "V2 "):
        with pytest.raises(RegistryError, match="is not a version id"):
            registry.get(bad)
    with pytest.raises(RegistryError, match=r"unknown version 'v9' in the registry .*registry\.db"):
        registry.promote("v9", "support")
    with pytest.raises(RegistryError, match="bad alias name 'v3'"):
        registry.promote("v1", "v3")
    with pytest.raises(RegistryError, match="unknown alias 'nope'.*aliases: support"):
        registry.resolve("@nope")
    assert registry.alias_target("support") == "v2"  # refused moves left no trace


def test_a_broken_registry_warns_and_never_fails_the_stage(
    tmp_path: Path, slm_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from slmkit.registry.hooks import record_eval, record_run

    (slm_home / "registry.db").mkdir()  # a folder where the database file should be
    data = write_jsonl(tmp_path / "train.jsonl", FACT_ROWS)
    record_run(_run_folder(tmp_path / "run", data, "default"))  # returns, does not raise
    assert record_eval([tmp_path / "run"], {"main": 1.0}) is None
    err = capsys.readouterr().err
    assert "model registry: run " in err and "not recorded" in err


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from slmkit.registry.store import Registry

    db, folder, tag = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    registry = Registry(db)
    for i in range(15):
        path = folder / f"{tag}-{i}"
        path.mkdir()
        registry.register(path, "model", note=tag)
        registry.register(folder / "shared", "model")
    """
)


def test_two_processes_register_at_once(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    db = tmp_path / "registry.db"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), str(tmp_path), tag],
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for tag in ("left", "right")
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    versions = Registry(db).versions()
    assert len(versions) == 31  # 15 + 15 + the shared folder once
    assert sorted(int(v.id[1:]) for v in versions) == list(range(1, 32))
    assert [v.note for v in versions].count("left") == 15
    assert sum(v.path == str(tmp_path / "shared") for v in versions) == 1


def test_train_registers_eval_scores_it_and_the_cli_shows_it(
    tmp_path: Path, slm_home: Path, tiny_model_dir: Path
) -> None:
    # the stages in this process (the tiny model is loaded here already); the CLI reads the result
    from slmkit.evaluate.config import EvalConfig
    from slmkit.evaluate.run import run_eval
    from slmkit.recipe import Recipe
    from slmkit.train.run import train

    data = write_jsonl(tmp_path / "sft.jsonl", read_jsonl(DEMO / "support_sft.jsonl")[:8])
    train(Recipe.model_validate(tiny_recipe(tiny_model_dir, tmp_path / "run", data, max_steps=2)))
    config = EvalConfig(
        models=[{"name": "tuned", "ref": "@v1"}],
        data=write_jsonl(tmp_path / "eval.jsonl", FACT_ROWS),
        out_dir=tmp_path / "r",
        max_tokens=4,
        similarity=False,
    )
    result = run_eval(config)
    assert result.models[0].run_dir == tmp_path / "run"  # `@v1` named the run folder

    listed = run_slm("models", "versions", "--json")
    assert listed.returncode == 0, listed.stderr
    (version,) = json.loads(listed.stdout)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert (version["id"], version["kind"], version["path"]) == ("v1", "run", str(tmp_path / "run"))
    assert version["recipe_sha256"] == manifest["recipe_sha256"]
    assert version["data_files"] == manifest["data_files"] and str(data) in version["data_files"]
    scores = version["eval_scores"]
    assert scores["main_metric"] == result.main_metric == "fact_recall"
    assert scores["main"] == result.models[0].main["mean"] is not None
    assert scores["report"] == str(tmp_path / "r" / "report.json")

    promoted = run_slm("models", "promote", "v1", "--as", "support")
    assert promoted.returncode == 0 and promoted.stdout.strip() == "@support -> v1"
    table = run_slm("models", "versions").stdout
    assert "v1" in table and "support" in table and "fact_recall" in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("models", "promote", "v7", "--as", "support"), "unknown version 'v7' in the registry"),
        (("chat", "@support", "hi"), "unknown alias 'support' in the registry"),
        (("models", "warm", "./no-such-model"), "model path './no-such-model' does not exist"),
    ],
)
def test_bad_references_are_one_line_exit_2(args: tuple[str, ...], message: str) -> None:
    proc = run_slm(*args)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: ") and message in lines[0]


def test_register_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    with pytest.raises(ModelNotFoundError, match="no-such-folder: no such file or folder"):
        register_path(tmp_path / "no-such-folder", None, registry)
    (tmp_path / "notes").mkdir()
    with pytest.raises(ModelNotFoundError, match="notes: not a model"):
        register_path(tmp_path / "notes", None, registry)
    assert registry.versions() == []
