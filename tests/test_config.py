"""Config machinery: YAML errors name file and line; overrides apply; unknown keys are errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from slmkit.config import StrictModel, apply_overrides, dump_config, load_config
from slmkit.errors import ConfigError


class Inner(StrictModel):
    lr: float = Field(1e-4, gt=0, description="Learning rate.")
    steps: int = Field(10, ge=1, description="Steps.")


class Outer(StrictModel):
    model: str = Field("default", description="Model reference.")
    train: Inner = Field(default_factory=Inner, description="Training settings.")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_loads_and_applies_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "model: default\ntrain:\n  lr: 0.001\n")
    cfg = load_config(path, Outer, ["train.steps=5", "model=runs/x"])
    assert cfg.train.lr == 0.001 and cfg.train.steps == 5 and cfg.model == "runs/x"
    assert "steps: 5" in dump_config(cfg)


def test_unknown_key_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "model: default\ntrain:\n  lr: 0.001\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml:4: train.stepz: unknown key"):
        load_config(path, Outer)


def test_bad_value_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "model: default\ntrain:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml:3: train.lr: .*greater than 0"):
        load_config(path, Outer)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "model: default\ntrain:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml:\d+: invalid YAML"):
        load_config(path, Outer)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), Outer)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml", Outer)


def test_override_without_equals_is_an_error() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.lr"])


# --- defaults live once: every CLI option that sets a config field takes its default and help from it

# the config models each command's options set
BOUND_MODELS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("export",): ("slmkit.export.config:ExportConfig",),
    ("merge",): ("slmkit.export.config:ExportConfig",),
    ("quant-eval",): ("slmkit.export.config:ExportConfig",),
    ("eval",): (
        "slmkit.evaluate.config:EvalConfig",
        "slmkit.evaluate.config:Criteria",
        "slmkit.evaluate.config:JudgeSettings",
        "slmkit.evaluate.config:RetrievalSettings",
    ),
    ("serve",): ("slmkit.serve.config:ServeConfig",),
    ("data", "validate"): ("slmkit.data.config:DataConfig",),
    ("data", "stats"): ("slmkit.data.config:DataConfig",),
    ("data", "convert"): ("slmkit.data.config:DataConfig",),
    ("data", "split"): ("slmkit.data.config:SplitConfig",),
    ("chat",): ("slmkit.models.settings:GenerationSettings",),
    ("estimate",): ("slmkit.train.estimate:EstimateConfig",),
    ("bench", "serve"): ("slmkit.serve.bench:BenchConfig",),
    ("ui",): ("slmkit.ui.config:BoardConfig",),
    ("cost",): ("slmkit.cost.config:CostConfig",),
}
# option name -> config field, where the two differ
FIELD_OF = {
    "quant": "quants",
    "dtype": "merge_dtype",
    "fmt": "format",
    "dataset": "names",
    "eval_files": "eval",
    "api_key": "api_keys",
    "judge_model": "model",
    "judge_url": "base_url",
    "retrieval": "questions",
    "min_value": "min",
    "max_value": "max",
}
# options whose presence switches something on, so the field's default is not theirs
NOT_A_DEFAULT = {"judge_url"}


def _model(path: str) -> type:
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _command(path: tuple[str, ...]):  # type: ignore[no-untyped-def]
    import typer

    from slmkit.cli import app

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return command


def default_mismatches(command, models: list[type]) -> list[str]:  # type: ignore[no-untyped-def]
    """Options of `command` whose default or help is not the config field's."""
    from slmkit.config import describe, field_default

    problems = []
    for param in command.params:
        if param.param_type_name != "option" or param.name in NOT_A_DEFAULT:
            continue
        field = FIELD_OF.get(param.name, param.name)
        model = next((m for m in models if field in m.model_fields), None)
        if model is None:
            continue  # an option of the command line only (e.g. --model, --bins)
        default = field_default(model, field)
        if isinstance(default, list) and all(isinstance(v, str) for v in default):
            default = ",".join(default)
        empty = default in (None, ..., "", [], {})
        if param.default is None and not empty:  # set from a config file unless given
            if param.show_default != str(default):
                problems.append(f"--{param.name}: shows {param.show_default!r}, field {default!r}")
        elif param.default not in ((None, ()) if empty else (default,)):
            problems.append(f"--{param.name}: default {param.default!r}, field {default!r}")
        if not (param.help or "").startswith(describe(model, field)):
            problems.append(f"--{param.name}: help is not the field's description")
    return problems


@pytest.mark.parametrize("path", list(BOUND_MODELS), ids=" ".join)
def test_cli_defaults_and_help_come_from_the_config_fields(path: tuple[str, ...]) -> None:
    models = [_model(m) for m in BOUND_MODELS[path]]
    assert default_mismatches(_command(path), models) == []


def test_a_literal_default_in_a_command_body_is_caught() -> None:
    import typer

    from slmkit.config import option
    from slmkit.export.config import ExportConfig

    app = typer.Typer()

    @app.command()
    def export(
        quant: str = typer.Option("q8_0", help="llama-quantize levels to produce."),
        max_prompts: int = option(ExportConfig, "max_prompts"),
        outtype: str = typer.Option("f16", help="Reference GGUF precision."),
    ) -> None:
        """A command that writes two defaults/help texts of its own."""

    command = typer.main.get_command(app)
    assert default_mismatches(command, [ExportConfig]) == [
        "--quant: default 'q8_0', field 'q8_0,q5_k_m,q4_k_m'",
        "--outtype: help is not the field's description",
    ]


def test_no_help_text_spells_out_a_literal_default() -> None:
    import re

    import typer

    from slmkit.cli import app

    def walk(command, path=()):  # type: ignore[no-untyped-def]
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, (*path, name))

    literal = re.compile(r"\(default:? [\d.]+\)")
    found = [
        f"slm {' '.join(path)} --{param.name}: {param.help}"
        for path, command in walk(typer.main.get_command(app))
        for param in command.params
        if literal.search(param.help or "")
    ]
    assert found == []


def test_option_takes_default_and_help_from_the_field() -> None:
    from slmkit.config import option

    plain = option(Inner, "steps", "--steps", min=1)
    assert (plain.default, plain.help, plain.param_decls) == (10, "Steps.", ("--steps",))
    from_file = option(Outer, "model", from_config=True, extra_help="Or a run folder.")
    assert from_file.default is None and from_file.show_default == "default"
    assert from_file.help == "Model reference. Or a run folder."


def test_option_values_build_the_config_and_name_the_option_on_errors() -> None:
    from slmkit.config import from_options

    assert from_options(Inner, {"lr": 0.5}).lr == 0.5
    with pytest.raises(ConfigError, match=r"^--learning-rate: .*greater than 0"):
        from_options(Inner, {"lr": -1}, {"lr": "--learning-rate"})
    with pytest.raises(ConfigError, match=r"^--steps: "):
        from_options(Outer, {"train": {"steps": 0}})


def test_the_data_stage_shares_the_recipe_data_fields() -> None:
    from slmkit.data.config import SHARED_FIELDS, DataConfig, DataSection

    for name in SHARED_FIELDS:
        ours, recipe = DataConfig.model_fields[name], DataSection.model_fields[name]
        assert (ours.annotation, ours.default, ours.description, ours.metadata) == (
            recipe.annotation,
            recipe.default,
            recipe.description,
            recipe.metadata,
        )
    section = DataSection(train=["a.jsonl"], cutoff_len=64, overflow="drop")
    config = DataConfig.from_section(section, [Path("a.jsonl")], [Path("eval.jsonl")])
    assert (config.cutoff_len, config.overflow, config.eval) == (64, "drop", [Path("eval.jsonl")])


def test_secrets_come_from_the_environment_through_one_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from slmkit.config import env_secret

    monkeypatch.setenv("SLM_TEST_SECRET", "  sk-abc \n")
    monkeypatch.setenv("SLM_TEST_EMPTY", " ")
    monkeypatch.delenv("SLM_TEST_UNSET", raising=False)
    assert env_secret("SLM_TEST_SECRET", "x.api_key_env") == "sk-abc"
    assert env_secret(None, "x.api_key_env") is None  # no variable named: no key
    assert env_secret("SLM_TEST_UNSET", "judge.api_key_env", required=False) is None
    for name in ("SLM_TEST_UNSET", "SLM_TEST_EMPTY"):
        with pytest.raises(ConfigError) as caught:
            env_secret(name, "models.0.upstream.api_key_env", hint="export it before `slm serve`")
        assert str(caught.value) == (
            f"models.0.upstream.api_key_env: environment variable {name} is not set; "
            "export it before `slm serve`"
        )
