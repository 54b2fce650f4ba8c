"""Packing, dynamic padding and length-grouped ordering: no compute spent on padding.

Packing puts several tokenized samples into one row of at most `block_size` tokens, with
`position_ids` restarting at 0 for each sample. In transformers 5.23 that is enough to keep samples
apart, *provided the model is called without an attention_mask and without a KV cache*
(`use_cache=False`):

- sdpa / eager: `masking_utils.find_packed_sequence_indices(position_ids)` turns the restarts into a
  block-diagonal causal mask (any batch size);
- flash_attention_2/3: `_is_packed_sequence` switches to the varlen kernel, but only for batch size 1,
  hence `PackedBatchCollator(flatten=True)` (the default) concatenates a batch into one row.

With `use_cache=True` (the Llama config default) the forward creates an empty DynamicCache, the packed
detection is skipped and samples in a row attend to each other: the collator adds `use_cache=False`.
The first label of every packed sample is -100 so no sample is trained to predict its first token
from the previous sample's last one.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from slmkit.data.template import IGNORE_INDEX, TokenizedSample
from slmkit.errors import DataError


@dataclass
class PackedRow:
    """Several samples in one row; `position_ids` restart at 0 at each sample's first token."""

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    def add(self, sample: TokenizedSample) -> None:
        self.input_ids += sample.input_ids
        self.labels += [IGNORE_INDEX, *sample.labels[1:]]
        self.position_ids += list(range(len(sample)))
        self.sources.append(sample.source)

    def as_dict(self) -> dict[str, list[int]]:
        return {
            "input_ids": self.input_ids,
            "labels": self.labels,
            "position_ids": self.position_ids,
        }


def pack_samples(samples: Sequence[TokenizedSample], block_size: int) -> list[PackedRow]:
    """Best-fit-decreasing packing into rows of at most `block_size` tokens (deterministic)."""
    too_long = next((s for s in samples if len(s) > block_size), None)
    if too_long is not None:
        raise DataError(
            f"{too_long.source}: sample of {len(too_long)} tokens is longer than the packing "
            f"block of {block_size}",
            hint="set cutoff_len <= block_size",
        )
    rows: list[PackedRow] = []
    free: list[tuple[int, int]] = []  # (free space, row index), sorted
    order = sorted(range(len(samples)), key=lambda i: (-len(samples[i]), i))
    for index in order:
        sample = samples[index]
        slot = bisect.bisect_left(free, (len(sample), -1))
        if slot == len(free):
            rows.append(PackedRow())
            row_index, space = len(rows) - 1, block_size
        else:
            space, row_index = free.pop(slot)
        rows[row_index].add(sample)
        if space - len(sample) > 0:
            bisect.insort(free, (space - len(sample), row_index))
    return rows


def _as_dict(feature: Any) -> dict[str, list[int]]:
    if isinstance(feature, PackedRow):
        return feature.as_dict()
    if isinstance(feature, TokenizedSample):
        return {"input_ids": feature.input_ids, "labels": feature.labels}
    return feature


@dataclass
class PaddingCollator:
    """Dynamic padding for the non-packed path: pad to the longest sample in the batch (right side),
    labels -100 on padding, and an attention_mask."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Any]) -> dict[str, Any]:
        import torch

        rows = [_as_dict(f) for f in features]
        width = _padded_width(max(len(r["input_ids"]) for r in rows), self.pad_to_multiple_of)
        input_ids, labels, mask = [], [], []
        for row in rows:
            pad = width - len(row["input_ids"])
            input_ids.append(list(row["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(row["labels"]) + [IGNORE_INDEX] * pad)
            mask.append([1] * len(row["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(input_ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }


@dataclass
class PackedBatchCollator:
    """Batches of packed rows for a model that separates samples by `position_ids` (see module doc).

    `flatten=True` concatenates the batch into one row (required by flash-attention's varlen path, fine
    for sdpa/eager); otherwise rows are padded and padding gets its own position block. Never returns
    an attention_mask (that would disable the packed-sequence detection) and sets use_cache=False.
    """

    pad_token_id: int
    flatten: bool = True

    def __call__(self, features: Sequence[Any]) -> dict[str, Any]:
        import torch

        rows = [_as_dict(f) for f in features]
        for row in rows:
            if "position_ids" not in row:
                row["position_ids"] = list(range(len(row["input_ids"])))
                row["labels"] = [IGNORE_INDEX, *row["labels"][1:]]
        if self.flatten:
            batch = {
                k: [[t for r in rows for t in r[k]]]
                for k in ("input_ids", "labels", "position_ids")
            }
        else:
            width = max(len(r["input_ids"]) for r in rows)
            batch = {"input_ids": [], "labels": [], "position_ids": []}
            for row in rows:
                pad = width - len(row["input_ids"])
                batch["input_ids"].append(list(row["input_ids"]) + [self.pad_token_id] * pad)
                batch["labels"].append(list(row["labels"]) + [IGNORE_INDEX] * pad)
                batch["position_ids"].append(list(row["position_ids"]) + list(range(pad)))
        tensors: dict[str, Any] = {k: torch.tensor(v) for k, v in batch.items()}
        tensors["use_cache"] = False
        return tensors


def _padded_width(longest: int, multiple: int | None) -> int:
    if not multiple:
        return longest
    return (longest + multiple - 1) // multiple * multiple


def length_grouped_order(
    lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_factor: int = 50
) -> list[int]:
    """A shuffled order in which neighbours have similar lengths, so dynamic padding wastes little.

    Indices are shuffled, cut into mega-batches of `batch_size * mega_batch_factor`, each sorted by
    length (longest first), split into batches, and the batches shuffled again (seeded, deterministic).
    """
    rng = random.Random(seed)
    indices = list(range(len(lengths)))
    rng.shuffle(indices)
    mega = batch_size * mega_batch_factor
    batches: list[list[int]] = []
    for start in range(0, len(indices), mega):
        chunk = sorted(indices[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return [i for batch in batches for i in batch]


class LengthGroupedSampler:
    """A torch-compatible sampler (iterable of indices) over `length_grouped_order`; new order per epoch."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(length_grouped_order(self.lengths, self.batch_size, self.seed + self.epoch))


def padding_waste(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> float:
    """Share of padded positions when batches are taken in `order` and padded to their longest."""
    total = padded = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        total += max(batch) * len(batch)
        padded += max(batch) * len(batch) - sum(batch)
    return padded / total if total else 0.0
