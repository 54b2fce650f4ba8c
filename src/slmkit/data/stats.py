"""`slm data stats`: counts per format, token lengths (histogram), share over cutoff, tokens per epoch."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.data.config import DataConfig
from slmkit.data.loader import load_records
from slmkit.data.records import DataLoadResult
from slmkit.data.template import TokenizeResult
from slmkit.data.validate import tokenize_records

_BAR = "█"


@dataclass
class DataStats:
    records: int
    per_format: dict[str, int]
    per_kind: dict[str, int]
    cutoff_len: int
    lengths: list[int] = field(default_factory=list)
    over_cutoff: int = 0
    tokens_per_epoch: int = 0
    trainable_tokens_per_epoch: int = 0
    trainable_share: float = 0.0
    tokenized: bool = False
    left_out: int = 0  # records with errors, not counted (`slm data validate` lists them)

    def percentile(self, q: float) -> int:
        if not self.lengths:
            return 0
        ordered = sorted(self.lengths)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    @property
    def over_cutoff_share(self) -> float:
        return self.over_cutoff / len(self.lengths) if self.lengths else 0.0


def data_stats(config: DataConfig, tokenizer: Any = None) -> DataStats:
    """`slm data stats`: counts per format; with a tokenizer also lengths and tokens per epoch."""
    loaded = load_records(list[str | Path](config.files), config.format, names=config.names)
    tokenized = None
    if tokenizer is not None and loaded.records:
        tokenized = tokenize_records(loaded, config, tokenizer)
    stats = compute_stats(loaded, tokenized, config.cutoff_len)
    stats.left_out = len(loaded.errors)
    return stats


def compute_stats(
    loaded: DataLoadResult, tokenized: TokenizeResult | None, cutoff_len: int
) -> DataStats:
    per_format: Counter[str] = Counter()
    for file, fmt in loaded.formats.items():
        per_format[fmt] += sum(1 for r in loaded.records if r.file == file)
    stats = DataStats(
        len(loaded.records),
        dict(per_format),
        dict(Counter(r.kind for r in loaded.records)),
        cutoff_len,
    )
    if tokenized is not None:
        stats.tokenized = True
        stats.lengths = list(tokenized.lengths)
        stats.over_cutoff = sum(1 for n in tokenized.lengths if n > cutoff_len)
        stats.tokens_per_epoch = sum(len(s) for s in tokenized.samples)
        stats.trainable_tokens_per_epoch = sum(s.n_trainable for s in tokenized.samples)
        stats.trainable_share = tokenized.trainable_share
    return stats


def histogram_lines(
    lengths: list[int], bins: int = 10, width: int = 40, cutoff_len: int | None = None
) -> list[str]:
    """A text histogram of token lengths, one line per bin: `  64- 127 | ████████ 42`."""
    if not lengths:
        return ["(no samples)"]
    low, high = min(lengths), max(lengths)
    step = max(1, math.ceil((high - low + 1) / bins))
    counts = Counter((n - low) // step for n in lengths)
    most = max(counts.values())
    digits = len(str(high + step))
    lines = []
    for b in range(math.ceil((high - low + 1) / step)):
        start, end = low + b * step, low + (b + 1) * step - 1
        bar = _BAR * max(1 if counts[b] else 0, round(width * counts[b] / most))
        flag = "  (over cutoff)" if cutoff_len is not None and start > cutoff_len else ""
        lines.append(
            f"{start:>{digits}}-{end:>{digits}} | {bar:<{width}} {counts[b]:>{len(str(most))}}{flag}"
        )
    return lines
