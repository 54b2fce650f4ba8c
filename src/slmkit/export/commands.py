"""CLI: `slm export`, `slm merge`, `slm quant-eval`. Thin: parse, call the stage, print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from slmkit.console import info, out, warn

QUANT_HELP = "Comma-separated llama-quantize levels: q8_0, q6_k, q5_k_m, q4_k_m; lower on request (q3_k_m, q2_k, ...)."


def export_config(**values: Any) -> Any:
    """An `ExportConfig` from CLI values; a bad value is one ConfigError line naming the option."""
    from pydantic import ValidationError

    from slmkit.config import format_validation_error
    from slmkit.errors import ConfigError
    from slmkit.export.config import ExportConfig, Thresholds

    thresholds = {k: v for k, v in values.items() if k in Thresholds.model_fields and v is not None}
    settings = {k: v for k, v in values.items() if k in ExportConfig.model_fields and v is not None}
    try:
        return ExportConfig(**settings, thresholds=Thresholds(**thresholds))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, name=_option_name)) from exc


def _option_name(loc: tuple[Any, ...]) -> str:
    """The CLI option a config field comes from (`quants` -> `--quants`, `max_kld` -> `--max-kld`)."""
    return f"--{str(loc[0]).replace('_', '-')}" if loc else "value"


def _print_table(table: Any) -> None:
    """The quant table on stdout, wide enough that a pipe's 80 columns never fold its numbers."""
    from rich.console import Console

    Console(highlight=False, width=max(out.width, 150), force_terminal=out.is_terminal).print(table)


def export_cmd(
    source: Annotated[str, typer.Argument(help="A run folder, an HF model folder, or `default`.")],
    quant: Annotated[str, typer.Option("--quant", help=QUANT_HELP)] = "q8_0,q5_k_m,q4_k_m",
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Export folder (default: RUN/export or exports/NAME)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Go on when the parity gate finds drift at f16.")
    ] = False,
    merge_dtype: Annotated[
        str, typer.Option("--merge-dtype", help="float16 | bfloat16 | float32")
    ] = "float16",
    outtype: Annotated[
        str, typer.Option("--outtype", help="Reference GGUF precision: f16 | bf16 | f32")
    ] = "f16",
    prompts: Annotated[
        Path | None, typer.Option("--prompts", help="Eval prompts JSONL (`prompt` or `messages`).")
    ] = None,
    heldout: Annotated[
        Path | None, typer.Option("--heldout", help="Held-out text for KLD / perplexity.")
    ] = None,
    max_prompts: Annotated[
        int | None, typer.Option("--max-prompts", help="Most eval prompts used.")
    ] = None,
    skip_eval: Annotated[
        bool, typer.Option("--skip-eval", help="Only merge, convert, quantize.")
    ] = False,
) -> None:
    """Merge -> GGUF -> quantize -> measure each level against f16 -> recommend; writes Modelfile and model card."""
    from slmkit.export.pipeline import export_model
    from slmkit.export.report import problem_lines, quant_table

    cfg = export_config(
        quants=quant,
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
    if result.quant_eval is not None:
        _print_table(quant_table(result.quant_eval))
        for line in problem_lines(result.quant_eval):
            info(f"outside thresholds: {line}")
        for note in result.quant_eval.notes:
            info(f"note: {note}")
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings_s.items())
    info(f"steps: {steps}")
    info(f"recommended: {result.recommended}; report: {result.out_dir / 'report.html'}")
    out.print(str(result.out_dir / result.recommended), markup=False)


def merge_cmd(
    run: Annotated[str, typer.Argument(help="A run folder with a LoRA adapter/.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Merged HF folder (default: RUN/merged).")
    ] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="float16 | bfloat16 | float32")] = "float16",
) -> None:
    """Merge a run's LoRA adapter into its base; verifies merged logits equal base+adapter logits."""
    from slmkit.export.merge import merge_adapter, resolve_adapter_run

    cfg = export_config(merge_dtype=dtype)
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
    out.print(str(result.out_dir), markup=False)


def quant_eval_cmd(
    reference: Annotated[Path, typer.Argument(help="Reference GGUF (f16/bf16/f32).")],
    quants: Annotated[list[Path], typer.Argument(help="Quantized GGUF files to compare.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Folder for report.json / report.html.")
    ] = Path("quant-eval"),
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Eval prompts JSONL.")] = None,
    heldout: Annotated[
        Path | None, typer.Option("--heldout", help="Held-out text for KLD / perplexity.")
    ] = None,
    max_prompts: Annotated[
        int | None, typer.Option("--max-prompts", help="Most eval prompts used.")
    ] = None,
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
