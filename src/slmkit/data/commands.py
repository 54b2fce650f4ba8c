"""`slm data validate | stats | convert | split`: thin wrappers over the data stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from slmkit.config import describe, from_options, option
from slmkit.console import console, out
from slmkit.data.config import FLAGS, DataConfig, SplitConfig, check_format, data_config
from slmkit.data.records import Problem
from slmkit.errors import DataError

ALL_DATASETS = "Default: every dataset with a local file."

data_app = typer.Typer(
    help="Check, inspect, convert and split training data.", no_args_is_help=True
)

FilesArg = Annotated[list[Path], typer.Argument(help=describe(DataConfig, "files"))]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Model whose tokenizer and chat template are used "
        "for token checks; `none` skips them.",
    ),
]


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def _tokenizer(model: str) -> Any:
    if model.lower() == "none":
        return None
    from slmkit.models.load import load_tokenizer

    return load_tokenizer(model)


def print_problems(problems: list[Problem], max_errors: int) -> None:
    """Errors first, then warnings, each `file:line: field: ...`; at most `max_errors` lines."""
    problems = sorted(problems, key=lambda p: p.severity != "error")
    for problem in problems[:max_errors]:
        text = (
            str(problem)
            if problem.severity == "error"
            else (f"{problem.file}:{problem.line}: {problem.field}: warning: {problem.message}")
        )
        out.print(
            text,
            markup=False,
            soft_wrap=True,
            style="red" if problem.severity == "error" else "yellow",
        )
    if len(problems) > max_errors:
        out.print(
            f"... and {len(problems) - max_errors} more problem(s) (raise --max-errors to see them)",
            markup=False,
            soft_wrap=True,
        )


def print_table(table: Table, width: int) -> None:
    """Tables in a pipe or a log are not cut to 80 columns: file paths stay whole."""
    if out.is_terminal:
        out.print(table)
    else:
        Console(width=max(width, 80), highlight=False).print(table)


@data_app.command("validate")
def validate_cmd(
    files: FilesArg,
    fmt: str = option(DataConfig, "format", "--format", "-f"),
    model: ModelOpt = "default",
    template: str | None = option(DataConfig, "template", "--template"),
    cutoff_len: int = option(DataConfig, "cutoff_len", "--cutoff-len"),
    overflow: str = option(DataConfig, "overflow"),
    train_on_prompt: bool = option(DataConfig, "train_on_prompt"),
    eval_files: list[Path] | None = option(DataConfig, "eval", "--eval"),
    dataset: list[str] | None = option(DataConfig, "names", "--dataset", extra_help=ALL_DATASETS),
    max_errors: Annotated[int, typer.Option(min=1, help="Show at most this many problems.")] = 50,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail (exit 2) on warnings too, e.g. duplicates.")
    ] = False,
    show: Annotated[
        int,
        typer.Option(
            "--show",
            min=0,
            help="Print the first N samples as rendered for training, the part without loss "
            "dimmed inside ⟦ ⟧.",
        ),
    ] = 0,
) -> None:
    """Check data files; every problem is shown as `file:line: field: what is wrong (expected ...)`."""
    from slmkit.data.validate import validate_data

    config = data_config(
        files=files,
        format=fmt,
        template=template,
        cutoff_len=cutoff_len,
        overflow=overflow,
        train_on_prompt=train_on_prompt,
        eval=eval_files or [],
        names=dataset,
    )
    tokenizer = _tokenizer(model)
    report = validate_data(config, tokenizer)
    print_problems(report.problems, max_errors)
    table = Table("file", "format", "records", "errors", "warnings", "trainable", "over cutoff")
    for f in report.files:
        share = "-" if f.trainable_share is None else f"{f.trainable_share:.1%}"
        table.add_row(
            f.file,
            f.format,
            str(f.records),
            str(f.errors),
            str(f.warnings),
            share,
            str(f.over_cutoff),
        )
    print_table(table, max((len(f.file) for f in report.files), default=10) + 90)
    _print_totals(report)
    if report.tokenized is not None and show:
        print_samples(report.tokenized.samples[:show], tokenizer)
    summary = (
        f"{len(report.loaded.records)} valid record(s), {report.n_errors} error(s), "
        f"{report.n_warnings} warning(s)"
    )
    if not report.ok or (strict and report.n_warnings):  # SlmError: one line on stderr, exit 2
        why = " (--strict: warnings fail)" if report.ok else ""
        raise DataError(f"validation failed{why}: {summary} (listed above)")
    out.print(f"[green]ok[/green]: {summary}")


def _print_totals(report: Any) -> None:
    """One line each for duplicates and over-cutoff samples: how many, where the first are."""
    duplicates = [p for p in report.problems if p.message.startswith("duplicate of ")]
    if duplicates:
        first = ", ".join(f"{p.file}:{p.line}" for p in duplicates[:3])
        out.print(
            f"{len(duplicates)} exact duplicate(s), kept (first: {first}); "
            "the recipe option data.dedupe: true drops them",
            markup=False,
            soft_wrap=True,
        )
    tok = report.tokenized
    if tok is not None and tok.n_over_cutoff:
        out.print(
            f"{tok.n_over_cutoff} sample(s) over cutoff_len {report.config.cutoff_len}: "
            f"{tok.n_truncated} truncated (prompt cut from its start), {tok.n_dropped} dropped",
            soft_wrap=True,
        )


def print_samples(samples: list[Any], tokenizer: Any) -> None:
    """Rendered samples with the no-loss part dimmed inside ⟦ ⟧, so a mask can be checked by eye."""
    from rich.text import Text

    from slmkit.data.template import mask_segments

    for sample in samples:
        out.print(
            f"── {sample.source}: {len(sample)} tokens, {sample.n_trainable} with loss",
            markup=False,
            soft_wrap=True,
        )
        text = Text()
        for segment, trained in mask_segments(sample, tokenizer):
            text.append(segment if trained else f"⟦{segment}⟧", style="" if trained else "dim")
        out.print(text, soft_wrap=True)
    out.print("── ⟦ ⟧ (dim): no loss; the rest is what the model learns", markup=False)


@data_app.command("stats")
def stats_cmd(
    files: FilesArg,
    fmt: str = option(DataConfig, "format", "--format", "-f"),
    model: ModelOpt = "default",
    template: str | None = option(DataConfig, "template", "--template"),
    cutoff_len: int = option(DataConfig, "cutoff_len", "--cutoff-len"),
    epochs: Annotated[float, typer.Option(min=0.0, help="Epochs, for the token estimate.")] = 1.0,
    bins: Annotated[int, typer.Option(min=2, max=50, help="Histogram bins.")] = 10,
    dataset: list[str] | None = option(DataConfig, "names", "--dataset", extra_help=ALL_DATASETS),
) -> None:
    """Counts per format, token-length histogram, share over cutoff, tokens per epoch."""
    from slmkit.data.stats import data_stats, histogram_lines

    config = data_config(
        files=files, format=fmt, template=template, cutoff_len=cutoff_len, names=dataset
    )
    stats = data_stats(config, _tokenizer(model))
    if stats.left_out:
        console.print(
            f"[yellow]warning:[/yellow] {stats.left_out} record(s) with errors left out "
            "(run `slm data validate` to see them)"
        )
    table = Table("format", "records")
    for name, count in sorted(stats.per_format.items()):
        table.add_row(name, str(count))
    table.add_row("total", str(stats.records))
    out.print(table)
    if not stats.tokenized:
        return
    out.print(
        f"token length per sample: p50 {stats.percentile(0.5)}, p90 {stats.percentile(0.9)}, "
        f"p99 {stats.percentile(0.99)}, max {max(stats.lengths, default=0)}"
    )
    for line in histogram_lines(stats.lengths, bins=bins, cutoff_len=cutoff_len):
        out.print(line, markup=False, soft_wrap=True)
    out.print(
        f"over cutoff_len {cutoff_len}: {stats.over_cutoff} ({stats.over_cutoff_share:.1%}), truncated"
    )
    out.print(
        f"tokens per epoch: {stats.tokens_per_epoch:,} ({stats.trainable_tokens_per_epoch:,} trainable, "
        f"{stats.trainable_share:.1%}); for {epochs:g} epoch(s): {round(stats.tokens_per_epoch * epochs):,}"
    )


@data_app.command("convert")
def convert_cmd(
    file: Annotated[Path, typer.Argument(help="Data file to convert.")],
    to: Annotated[str, typer.Option("--to", help="Target format: messages, alpaca, sharegpt.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Output file (.jsonl, or .json for an array).")
    ],
    fmt: str = option(DataConfig, "format", "--format", "-f"),
) -> None:
    """Convert a data file to another format (records that the target cannot express are errors)."""
    from slmkit.data.convert import TARGETS, convert_records, write_rows
    from slmkit.data.loader import load_records

    check_format(fmt)
    if to not in TARGETS:
        raise DataError(f"--to {to!r}: unknown target (expected one of {', '.join(TARGETS)})")
    loaded = load_records([file], fmt)
    rows, problems = convert_records(loaded.records, to)
    problems = loaded.errors + problems
    if problems:
        print_problems(problems, 50)
        raise DataError(
            f"conversion failed: {len(problems)} error(s) (listed above); nothing written"
        )
    write_rows(rows, output)
    out.print(f"wrote {len(rows)} record(s) as {to} to {output}")


@data_app.command("split")
def split_cmd(
    files: FilesArg,
    output_dir: Path = option(SplitConfig, "output_dir", "--output-dir", "-o"),
    val_ratio: float = option(SplitConfig, "val_ratio"),
    seed: int = option(SplitConfig, "seed"),
    fmt: str = option(SplitConfig, "format", "--format", "-f"),
    to: str = option(SplitConfig, "to", "--to"),
) -> None:
    """Deterministic train/validation split (records with the same prompt stay together)."""
    from slmkit.data.split import split_data

    check_format(fmt)
    values = {"files": files, "output_dir": output_dir, "val_ratio": val_ratio, "seed": seed}
    config = from_options(SplitConfig, {**values, "format": fmt, "to": to}, FLAGS)
    result = split_data(config)
    out.print(f"train: {result.train} record(s), val: {result.val} record(s) -> {output_dir}")


@data_app.command("templates")
def templates_cmd(
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="Also say which named template this model's own one renders like."
        ),
    ] = None,
) -> None:
    """The named chat templates (recipe `data.template`, `--template`): who uses each, and
    whether a training variant marks the assistant's tokens."""
    from slmkit.models.templates import NAMED_TEMPLATES, template_name

    table = Table("name", "models", "loss mask from")
    for named in NAMED_TEMPLATES.values():
        how = "{% generation %} markers" if named.training else "rendering turn by turn"
        table.add_row(named.name, named.models, how)
    print_table(table, 110)
    if model is not None:
        from slmkit.data.template import resolve_chat_template

        own = resolve_chat_template(_tokenizer(model))
        name = template_name(own)
        out.print(
            f"{model}: its own template renders like {name!r}"
            if name
            else f"{model}: its own template is not one of the named ones (used as it is)",
            markup=False,
            soft_wrap=True,
        )
