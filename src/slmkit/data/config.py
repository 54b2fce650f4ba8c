"""Settings of the data stage (`slm data validate | stats | split`, the pipeline's validate stage).

The settings a recipe's `data:` section shares with the data stage are taken from that section
(`train/config.py::DataSection`) by reference: type, default, bounds and description live there once.
"""

from __future__ import annotations

from copy import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from slmkit.config import StrictModel
from slmkit.train.config import DataSection

DataFormat = Literal["auto", "alpaca", "sharegpt", "messages", "preference", "text"]
SplitTarget = Literal["messages", "alpaca", "sharegpt"]

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
