"""Deterministic train/validation split by ratio and seed.

Records that share the same prompt stay on the same side, so a paraphrase-free copy of a training
prompt can never end up in validation (that would be leakage, not generalisation).
"""

from __future__ import annotations

import random
from collections import OrderedDict

from slmkit.data.leakage import normalise_prompt, record_prompt
from slmkit.data.records import Record


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
