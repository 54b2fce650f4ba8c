"""Deterministic train/validation split by ratio and seed.

Records that share the same prompt stay on the same side, so a paraphrase-free copy of a training
prompt can never end up in validation (that would be leakage, not generalisation).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from slmkit.data.config import SplitConfig
from slmkit.data.convert import convert_records, write_rows
from slmkit.data.leakage import normalise_prompt, record_prompt
from slmkit.data.loader import load_records
from slmkit.data.records import Record
from slmkit.errors import DataError


@dataclass
class SplitResult:
    train: int
    val: int
    files: list[Path]


def split_data(config: SplitConfig) -> SplitResult:
    """`slm data split`: load `config.files`, split them, write train.jsonl and val.jsonl as `config.to`."""
    loaded = load_records(list[str | Path](config.files), config.format)
    loaded.raise_for_errors()
    train, val = split_records(loaded.records, config.val_ratio, config.seed)
    files = []
    for name, part in (("train", train), ("val", val)):
        rows, problems = convert_records(part, config.to)
        if problems:
            raise DataError(str(problems[0]))
        files.append(config.output_dir / f"{name}.jsonl")
        write_rows(rows, files[-1])
    return SplitResult(len(train), len(val), files)


def split_records(
    records: list[Record], val_ratio: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """(train, val): about `val_ratio` of the records in val, the same result for the same inputs and seed."""
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    if val_ratio == 0.0 or len(records) < 2:
        return list(records), []
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for index, record in enumerate(records):
        groups.setdefault(normalise_prompt(record_prompt(record)) or f"#{index}", []).append(index)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    target = max(1, round(len(records) * val_ratio))
    val_indices: set[int] = set()
    for key in keys:
        if len(val_indices) >= target:
            break
        if len(records) - len(val_indices) - len(groups[key]) < 1:
            continue  # never leave training empty
        val_indices.update(groups[key])
    train = [r for i, r in enumerate(records) if i not in val_indices]
    val = [r for i, r in enumerate(records) if i in val_indices]
    return train, val
