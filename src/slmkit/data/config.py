"""Settings of the data stage (`slm data validate | stats | split`, the pipeline's validate stage).

A recipe's `data:` section (`DataSection`) lives here, below training; the settings the data stage
shares with it are taken from it by reference: type, default, bounds and description live once.
"""

from __future__ import annotations

from copy import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from slmkit.config import StrictModel, from_options
from slmkit.errors import DataError
from slmkit.models.templates import TEMPLATE_NAMES, named_template

DataFormat = Literal["auto", "alpaca", "sharegpt", "messages", "preference", "text"]
SplitTarget = Literal["messages", "alpaca", "sharegpt"]


class DataSection(StrictModel):
    """Which records to train on and how they become token sequences."""

    train: list[str] = Field(
        default_factory=list,
        description="Data files (JSONL/JSON/CSV/Parquet) or a folder with LLaMA-Factory's dataset_info.json; "
        "relative paths are resolved against the recipe's folder.",
    )
    names: list[str] | None = Field(
        default=None,
        description="Dataset names to pick from dataset_info.json (when `train` is such a folder).",
    )
    format: Literal["auto", "alpaca", "sharegpt", "messages", "preference", "text"] = Field(
        default="auto", description="Record format; `auto` detects it per file."
    )
    template: str | None = Field(
        default=None,
        description="Chat template by name (" + ", ".join(TEMPLATE_NAMES) + "); empty = the "
        "model's own. The template used is saved with the run and written into its GGUF exports.",
    )
    cutoff_len: int = Field(default=1024, ge=16, le=131072, description="Most tokens per sample.")
    overflow: Literal["truncate", "drop"] = Field(
        default="truncate",
        description="Samples longer than `cutoff_len`: `truncate` cuts the prompt from its start "
        "(oldest turns first, system prompt kept) so the answer keeps its tokens; `drop` leaves "
        "the sample out. Both warn with file:line and are counted.",
    )
    dedupe: bool = Field(
        default=False,
        description="Drop exact duplicate records (same turns, system prompt and tools) before "
        "training, keeping the first copy; off by default, as in LLaMA-Factory.",
    )
    train_on_prompt: bool = Field(
        default=False,
        description="Also compute loss on system/user turns (default: assistant turns only).",
    )
    packing: bool = Field(
        default=False,
        description="Pack samples into `cutoff_len` rows (position ids restart per sample, no attention across "
        "samples). Off by default: without flash-attention a packed row attends over its whole length; "
        "compare both with benchmarks/bench_train.py.",
    )
    val_ratio: float = Field(
        default=0.0, ge=0.0, lt=0.9, description="Share of records held out for validation loss."
    )
    val: list[str] = Field(
        default_factory=list, description="Separate validation files (instead of `val_ratio`)."
    )
    max_samples: int | None = Field(
        default=None, ge=1, description="Use only the first N records (quick trials)."
    )

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return named_template(value).name
        except DataError as exc:
            raise ValueError(exc.message) from None


# DataSection fields the data stage uses as they are.
SHARED_FIELDS = ("names", "format", "template", "cutoff_len", "overflow", "train_on_prompt")


def _recipe_field(name: str) -> Any:
    """The recipe's `data.<name>` field (default, bounds, description) for a data-stage model."""
    return copy(DataSection.model_fields[name])


FILES_DESCRIPTION = (
    "Data files (JSONL, JSON, CSV, Parquet) or LLaMA-Factory data folders (with dataset_info.json)."
)


class DataConfig(StrictModel):
    """What `validate_data` and `data_stats` read and how they turn records into token sequences."""

    files: list[Path] = Field(min_length=1, description=FILES_DESCRIPTION)
    names: list[str] | None = _recipe_field("names")
    format: DataFormat = _recipe_field("format")
    template: str | None = _recipe_field("template")
    cutoff_len: int = _recipe_field("cutoff_len")
    overflow: Literal["truncate", "drop"] = _recipe_field("overflow")
    train_on_prompt: bool = _recipe_field("train_on_prompt")
    eval: list[Path] = Field(
        default_factory=list,
        description="Eval/test file(s) to check for leakage from the training data.",
    )

    @classmethod
    def from_section(
        cls, section: DataSection, files: list[Path], eval_files: list[Path] | None = None
    ) -> DataConfig:
        """The data stage's settings for a recipe's `data:` section (files already resolved)."""
        shared = section.model_dump(include=set(SHARED_FIELDS))
        return cls(files=files, eval=eval_files or [], **shared)


class SplitConfig(StrictModel):
    """What `split_data` writes: a deterministic train/validation split of data files."""

    files: list[Path] = Field(min_length=1, description=FILES_DESCRIPTION)
    output_dir: Path = Field(description="Folder for train.jsonl and val.jsonl.")
    format: DataFormat = _recipe_field("format")
    val_ratio: float = Field(
        default=0.1,
        ge=0.0,
        le=0.9,
        description="Share of records for validation (records with the same prompt stay together).",
    )
    seed: int = Field(default=0, description="Seed: the same seed gives the same split.")
    to: SplitTarget = Field(default="messages", description="Format of the written files.")


# What `slm data` and the board's Data tab give as options, as settings.
# config field -> the option that sets it, where the two names differ (for error messages)
FLAGS = {"files": "FILES", "names": "--dataset", "eval": "--eval", "output_dir": "--output-dir"}


def check_format(fmt: str, template: str | None = None) -> None:
    from slmkit.data.loader import FORMAT_CHOICES
    from slmkit.models.templates import NAMED_TEMPLATES, named_template

    if template is not None and template.lower() not in NAMED_TEMPLATES:
        try:
            named_template(template)
        except DataError as exc:
            raise DataError(f"--template {template!r}: {exc.message}") from None

    if fmt not in FORMAT_CHOICES:
        raise DataError(
            f"--format {fmt!r}: unknown format (expected one of {', '.join(FORMAT_CHOICES)})"
        )


def data_config(**values: Any) -> DataConfig:
    """The data stage's settings from command-line values; a bad one names its option."""
    check_format(values["format"], values.get("template"))
    return from_options(DataConfig, values, FLAGS)
