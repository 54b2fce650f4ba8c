"""`slm data validate`: load, normalise, template, mask and cross-check data; one report of every problem."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slmkit.data.config import DataConfig
from slmkit.data.leakage import eval_prompts, find_leakage
from slmkit.data.loader import load_records
from slmkit.data.records import DataLoadResult, Problem, display_path
from slmkit.data.template import TokenizeResult, tokenize_sft


@dataclass
class FileSummary:
    file: str
    format: str
    records: int
    errors: int = 0
    warnings: int = 0
    trainable_share: float | None = None
    over_cutoff: int = 0


@dataclass
class ValidationReport:
    loaded: DataLoadResult
    tokenized: TokenizeResult | None
    files: list[FileSummary]
    config: DataConfig
    problems: list[Problem] = field(default_factory=list)

    @property
    def n_errors(self) -> int:
        return sum(1 for p in self.problems if p.severity == "error")

    @property
    def n_warnings(self) -> int:
        return sum(1 for p in self.problems if p.severity == "warning")

    @property
    def ok(self) -> bool:
        return self.n_errors == 0


def validate_data(config: DataConfig, tokenizer: Any = None) -> ValidationReport:
    """Every check of the data layer on `config.files`; with a tokenizer also templating, masks and lengths."""
    loaded = load_records(list(config.files), config.format, names=config.names)
    problems = list(loaded.problems)
    tokenized = None
    if tokenizer is not None and loaded.records:
        tokenized = tokenize_records(loaded, config, tokenizer)
        problems += tokenized.problems
    eval_counts: dict[str, int] = {}
    for eval_path in config.eval:
        prompts, read_problems = eval_prompts(eval_path)
        eval_counts[display_path(eval_path)] = len(prompts)
        problems += read_problems + find_leakage(loaded.records, prompts)
    order = {f: i for i, f in enumerate(loaded.formats)}
    problems.sort(key=lambda p: (order.get(p.file, len(order)), p.file, p.line))
    files = _summaries(loaded, tokenized, problems, config.cutoff_len)
    listed = {f.file: f for f in files}
    for file, count in eval_counts.items():
        summary = listed.get(file) or FileSummary(file, "", 0)
        summary.format, summary.records = "eval (leakage)", count
        if file not in listed:
            files.append(summary)
    return ValidationReport(loaded, tokenized, files, config, problems)


def tokenize_records(loaded: DataLoadResult, config: DataConfig, tokenizer: Any) -> TokenizeResult:
    """The loaded records as training samples, templated and cut as `config` says."""
    return tokenize_sft(
        loaded.records,
        tokenizer,
        cutoff_len=config.cutoff_len,
        template=config.template,
        overflow=config.overflow,
        train_on_prompt=config.train_on_prompt,
    )


def _summaries(
    loaded: DataLoadResult,
    tokenized: TokenizeResult | None,
    problems: list[Problem],
    cutoff_len: int,
) -> list[FileSummary]:
    shares = tokenized.trainable_share_by_file() if tokenized else {}
    tokenized_files = (
        {s.rsplit(":", 1)[0] for s in tokenized.length_sources} if tokenized else set()
    )
    over: dict[str, int] = {}
    if tokenized is not None:
        for length, source in zip(tokenized.lengths, tokenized.length_sources, strict=True):
            if length > cutoff_len:
                file = source.rsplit(":", 1)[0]
                over[file] = over.get(file, 0) + 1
    files = list(loaded.formats) + sorted({p.file for p in problems} - set(loaded.formats))
    summaries = []
    for file in files:
        mine = [p for p in problems if p.file == file]
        summaries.append(
            FileSummary(
                file=file,
                format=loaded.formats.get(file, "-"),
                records=loaded.counts.get(file, 0),
                errors=sum(1 for p in mine if p.severity == "error"),
                warnings=sum(1 for p in mine if p.severity == "warning"),
                trainable_share=shares.get(file, 0.0 if file in tokenized_files else None),
                over_cutoff=over.get(file, 0),
            )
        )
    return summaries
