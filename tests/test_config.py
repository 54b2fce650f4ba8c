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
