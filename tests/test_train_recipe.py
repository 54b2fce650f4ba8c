"""Recipes: every shipped recipe loads; bad recipes end in exit 2 with the YAML line; device checks."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from slmkit.config import load_config
from slmkit.errors import ConfigError
from slmkit.recipe import Recipe, load_recipe

ALL_YAML = sorted((REPO / "recipes").rglob("*.yaml"))
ACCELERATE_CONFIGS = [p for p in ALL_YAML if p.parent.name == "accelerate"]
RECIPES = [p for p in ALL_YAML if p not in ACCELERATE_CONFIGS]


# the first line is the command, copy-pasteable from the repo root; a note may follow after two spaces
HEADER = re.compile(r"# (?P<command>slm \S+ \S+)(?:  +\(.+\))?")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_names_its_command(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.data.train
    first_line = path.read_text().splitlines()[0]
    header = HEADER.fullmatch(first_line)
    assert header, f"{path.name}: first line must be `# slm train|run RECIPE`, got {first_line!r}"
    _, command, recipe_arg = shlex.split(header["command"])
    assert command in {"train", "run"}
    assert recipe_arg == path.relative_to(REPO).as_posix()


def test_recipe_header_check_rejects_a_loose_mention() -> None:
    # what the old check let through: a header that only mentions slm somewhere
    assert not HEADER.fullmatch("# make demo = slm run recipes/demo.yaml")
    assert not HEADER.fullmatch("# Train with slm; see docs/train.md")
    assert HEADER.fullmatch("# slm train recipes/qlora.yaml   (CUDA GPU only)")


def test_recipe_header_commands_run_the_recipe(slm) -> None:
    """`slm train` headers are real commands: `--print-config` of exactly that command works."""
    train_headers = [
        p for p in RECIPES if p.read_text().startswith(f"# slm train {p.relative_to(REPO)}")
    ]
    assert train_headers
    for path in train_headers:
        result = slm("train", str(path.relative_to(REPO)), "--print-config")
        assert result.returncode == 0, result.stderr
        assert yaml.safe_load(result.stdout)["method"] == load_recipe(path).method


def test_shipped_recipes_exist() -> None:
    names = {p.name for p in RECIPES}
    assert {"demo.yaml", "customer-service.yaml", "dpo.yaml", "from-scratch.yaml"} <= names
    assert {p.name for p in ACCELERATE_CONFIGS} == {
        "ddp-gpus.yaml",
        "fsdp.yaml",
        "deepspeed-zero2.yaml",
        "deepspeed-zero3.yaml",
    }


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_every_accelerate_config_loads_and_names_its_command(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))  # accelerate refuses unknown keys
    command = (
        f"# accelerate launch --config_file recipes/accelerate/{path.name} -m slmkit.cli train "
    )
    assert path.read_text().startswith(command)
    assert config.num_processes >= 2 and not config.use_cpu
    if config.distributed_type == "DEEPSPEED" and config.deepspeed_config["zero_stage"] == 3:
        # without it save_model cannot gather the weights and leaves only ZeRO shards
        assert config.deepspeed_config["zero3_save_16bit_model"] is True
    if config.distributed_type == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2


def test_defaults_follow_the_seed_practice() -> None:
    recipe = Recipe(data={"train": ["x.jsonl"]})
    assert (recipe.lora.r, recipe.lora.alpha, recipe.lora.dropout) == (16, 32, 0.05)
    assert recipe.dpo.beta is None and recipe.dpo.beta_for("dpo") == 0.1  # the papers' values
    assert [recipe.dpo.beta_for(m) for m in ("kto", "orpo", "simpo")] == [0.1, 0.1, 2.0]
    assert Recipe(data={"train": ["x.jsonl"]}, dpo={"beta": 0.3}).dpo.beta_for("simpo") == 0.3
    assert recipe.finetuning == "lora" and recipe.method == "sft"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_file_line_and_key(tmp_path: Path, slm) -> None:
    path = write(
        tmp_path, "model: default\ndata:\n  train: [a.jsonl]\ntrain:\n  lr: 1e-4\n  epochz: 3\n"
    )
    result = slm("train", str(path))
    assert result.returncode == 2
    assert f"{path}:6: train.epochz: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_value_names_its_line(tmp_path: Path, slm) -> None:
    path = write(tmp_path, "data:\n  train: [a.jsonl]\nfinetuning: lorra\n")
    result = slm("train", str(path))
    assert result.returncode == 2
    assert f"{path}:3: finetuning:" in result.stderr and "lora" in result.stderr


def test_bad_yaml_names_its_line(tmp_path: Path, slm) -> None:
    path = write(tmp_path, "data:\n  train: [a.jsonl\nmethod: sft\n")
    result = slm("train", str(path))
    assert result.returncode == 2
    assert "invalid YAML" in result.stderr and f"{path}:" in result.stderr


def test_cross_field_rules_are_errors() -> None:
    with pytest.raises(ValueError, match="init.mode: random needs finetuning: full"):
        Recipe(data={"train": ["x"]}, init={"mode": "random"})
    with pytest.raises(ValueError, match=r"data\.train"):
        Recipe()


def test_overrides_and_print_config(tmp_path: Path, slm) -> None:
    path = write(tmp_path, "data:\n  train: [a.jsonl]\n")
    result = slm(
        "train", str(path), "--set", "train.lr=5e-4", "--set", "lora.r=8", "--print-config"
    )
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["train"]["lr"] == 5e-4 and printed["lora"]["r"] == 8
    assert printed["train"]["scheduler"] == "cosine"  # defaults are shown too


def test_bad_override_value_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  train: [a.jsonl]\n")
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(path, Recipe, ["train.lr=-1"])


def test_qlora_on_cpu_fails_fast_with_one_line(tmp_path: Path, slm) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    data = tmp_path / "d.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    )
    path = write(
        tmp_path, f"finetuning: qlora\ndata:\n  train: [{data}]\noutput_dir: {tmp_path / 'run'}\n"
    )
    result = slm("train", str(path))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "qlora needs a CUDA GPU" in lines[0]
    assert not (tmp_path / "run").exists()


def test_docs_recipe_reference_is_current() -> None:
    from slmkit.recipe import recipe_reference_markdown

    text = (REPO / "docs" / "train.md").read_text()
    block = text.split("<!-- reference:recipe -->\n", 1)[1].split(
        "\n<!-- /reference:recipe -->", 1
    )[0]
    assert block == recipe_reference_markdown(), "regenerate the table in docs/train.md"


@pytest.mark.parametrize(
    "export", [{}, {"format": "onnx"}, {"format": "onnx", "precisions": "fp32,int4"}]
)
def test_a_recipe_written_back_and_read_again_keeps_its_export_settings(export: dict) -> None:
    # the pipeline re-reads dumped recipes: the defaults of the format not chosen must not trip
    # the check that refuses a setting of the other format
    from slmkit.recipe import Recipe

    recipe = Recipe.model_validate(
        {"model": "default", "data": {"train": ["a.jsonl"]}, "export": export}
    )
    again = Recipe.model_validate(recipe.model_dump(mode="json"))
    assert again.export == recipe.export
    assert again.export.onnx_precisions == (
        ["fp32", "int4"] if "precisions" in export else ["int8"]
    )


@pytest.mark.parametrize(
    ("export", "field"),
    [({"precisions": "int8"}, "precisions"), ({"format": "onnx", "quants": "q8_0"}, "quants")],
)
def test_a_setting_of_the_other_export_format_is_refused(export: dict, field: str) -> None:
    from pydantic import ValidationError

    from slmkit.recipe import Recipe

    with pytest.raises(ValidationError) as caught:
        Recipe.model_validate(
            {"model": "default", "data": {"train": ["a.jsonl"]}, "export": export}
        )
    assert caught.value.errors()[0]["loc"] == ("export", field)
