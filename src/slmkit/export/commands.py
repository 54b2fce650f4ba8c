"""CLI: `slm export`, `slm merge`, `slm quant-eval`. Thin: parse, call the stage, print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from slmkit.config import from_options, option
from slmkit.console import info, out, result_line, warn
from slmkit.export.config import (
    DEFAULT_QUANTS,
    LOW_QUANTS,
    STANDARD_QUANTS,
    ExportConfig,
    export_config,
)

# What only the command line needs to say about `--quant` (the field says what it is).
QUANT_SYNTAX = f"Comma-separated: {', '.join(STANDARD_QUANTS)}; lower on request ({', '.join(LOW_QUANTS[-3:])}, ...)."


def _print_table(table: Any) -> None:
    """The quant table on stdout, wide enough that a pipe's 80 columns never fold its numbers."""
    from rich.console import Console

    Console(highlight=False, width=max(out.width, 150), force_terminal=out.is_terminal).print(table)


def export_cmd(
    source: Annotated[str, typer.Argument(help="A run folder, an HF model folder, or `default`.")],
    quant: str = option(ExportConfig, "quants", "--quant", "--quants", extra_help=QUANT_SYNTAX),
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Export folder (default: RUN/export or exports/NAME; with --format onnx "
            "RUN/export-onnx, gptq RUN/export-gptq, awq RUN/export-awq).",
        ),
    ] = None,
    export_format: str = option(ExportConfig, "format", "--format"),
    precision: str | None = option(
        ExportConfig,
        "precisions",
        "--precision",
        "--precisions",
        from_config=True,
        extra_help="Comma-separated; only with --format onnx.",
    ),
    force: bool = option(ExportConfig, "force", "--force"),
    merge_dtype: str = option(ExportConfig, "merge_dtype", "--merge-dtype"),
    outtype: str = option(ExportConfig, "outtype", "--outtype"),
    prompts: Path | None = option(ExportConfig, "prompts", "--prompts"),
    heldout: Path | None = option(ExportConfig, "heldout", "--heldout"),
    max_prompts: int = option(ExportConfig, "max_prompts", "--max-prompts"),
    skip_eval: bool = option(ExportConfig, "skip_eval", "--skip-eval"),
) -> None:
    """Merge -> GGUF -> quantize -> measure each level against f16 -> recommend; writes Modelfile and model card.

    With --format onnx: merge -> ONNX Runtime GenAI folders per --precision, measured against PyTorch fp32.
    With --format gptq or awq: merge -> INT4 compressed-tensors folder for vLLM (llm-compressor),
    measured against the unquantized model."""
    from slmkit.export.pipeline import export_model
    from slmkit.export.report import problem_lines, quant_table

    default_quants = ",".join(DEFAULT_QUANTS)
    cfg = export_config(
        format=export_format,
        # --quant has a default: with --format onnx only a --quant the user typed is an error
        quants=None if export_format != "gguf" and quant == default_quants else quant,
        precisions=precision,
        force=force,
        merge_dtype=merge_dtype,
        outtype=outtype,
        prompts=prompts,
        heldout=heldout,
        max_prompts=max_prompts,
        skip_eval=skip_eval,
    )
    result = export_model(source, output, cfg)
    if result.parity is not None and not result.parity.passed:
        warn(f"parity gate failed but --force was given: {'; '.join(result.parity.reasons)}")
    if cfg.format in ("gptq", "awq"):
        _print_compressed(result)
    if result.quant_eval is not None:
        _print_table(quant_table(result.quant_eval))
        for line in problem_lines(result.quant_eval):
            info(f"outside thresholds: {line}")
        for note in result.quant_eval.notes:
            info(f"note: {note}")
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings_s.items())
    info(f"steps: {steps}")
    report = "README.md" if cfg.format in ("gptq", "awq") else "report.html"
    info(f"recommended: {result.recommended}; report: {result.out_dir / report}")
    result_line(str(result.out_dir / result.recommended))


def _print_compressed(result: Any) -> None:
    import json

    from rich.table import Table

    quality = json.loads((result.out_dir / "export.json").read_text())["quality"]
    level = result.files[0]
    table = Table("folder", "size", "KLD", "top-1", "PPL", "PPL unquantized", "within")
    if "kld" in quality:
        table.add_row(
            level.level,
            f"{level.size_bytes / 2**20:.1f} MiB",
            f"{quality['kld']:.4f}",
            f"{quality['top1']:.1%}",
            f"{quality['ppl']:.2f}",
            f"{quality['ppl_reference']:.2f}",
            "yes" if level.within else "; ".join(level.problems),
        )
    else:
        table.add_row(level.level, f"{level.size_bytes / 2**20:.1f} MiB", *["-"] * 5)
    _print_table(table)


def merge_cmd(
    run: Annotated[str, typer.Argument(help="A run folder with a LoRA adapter/.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Merged HF folder (default: RUN/merged).")
    ] = None,
    dtype: str = option(ExportConfig, "merge_dtype", "--dtype"),
) -> None:
    """Merge a run's LoRA adapter into its base; verifies merged logits equal base+adapter logits."""
    from slmkit.export.merge import merge_adapter, resolve_adapter_run

    cfg = from_options(ExportConfig, {"merge_dtype": dtype}, {"merge_dtype": "--dtype"})
    resolved = resolve_adapter_run(run)
    assert resolved.run_dir is not None
    result = merge_adapter(
        resolved,
        (output or resolved.run_dir / "merged").resolve(),
        dtype=cfg.merge_dtype,
        atol=cfg.thresholds.merge_atol,
    )
    for note in result.notes:
        info(f"note: {note}")
    info(
        f"merge check: max |logit diff| {result.max_logit_diff:.1e}; saved {result.dtype} top-1 agreement "
        f"{result.saved_top1:.1%}"
    )
    result_line(str(result.out_dir))


def quant_eval_cmd(
    reference: Annotated[Path, typer.Argument(help="Reference GGUF (f16/bf16/f32).")],
    quants: Annotated[list[Path], typer.Argument(help="Quantized GGUF files to compare.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Folder for report.json / report.html.")
    ] = Path("quant-eval"),
    prompts: Path | None = option(ExportConfig, "prompts", "--prompts"),
    heldout: Path | None = option(ExportConfig, "heldout", "--heldout"),
    max_prompts: int = option(ExportConfig, "max_prompts", "--max-prompts"),
) -> None:
    """Measure quantized GGUFs against a reference GGUF: KLD, top-1, PPL ratio, answer agreement."""
    from slmkit.export.pipeline import quant_eval_files
    from slmkit.export.report import problem_lines, quant_table

    cfg = export_config(prompts=prompts, heldout=heldout, max_prompts=max_prompts)
    result = quant_eval_files(reference, quants, cfg, output.resolve())
    _print_table(quant_table(result))
    for line in problem_lines(result):
        info(f"outside thresholds: {line}")
    for note in result.notes:
        info(f"note: {note}")
    info(
        f"recommended: {Path(result.recommended).name}; report: {output.resolve() / 'report.html'}"
    )


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
    app.command("merge")(merge_cmd)
    app.command("quant-eval")(quant_eval_cmd)
