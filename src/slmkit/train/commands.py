"""CLI: `slm train RECIPE` and `slm estimate`. Thin: parse, call the stage, print."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from slmkit.config import option
from slmkit.console import info, out, result_line
from slmkit.train.estimate import EstimateConfig


def train_cmd(
    recipe_path: Annotated[
        Path, typer.Argument(metavar="RECIPE", help="Training recipe YAML (see recipes/).")
    ],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a recipe value: --set train.lr=1e-4")
    ] = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the fully resolved recipe and exit.")
    ] = False,
    resume: Annotated[
        bool | None,
        typer.Option(
            "--resume/--no-resume",
            help="Continue from the run folder's last checkpoint (default: when one exists) or start over.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Resume even though the data or recipe changed.")
    ] = False,
    nproc: Annotated[
        int, typer.Option("--nproc", min=1, help="Processes (DDP via torchrun; gloo on CPU).")
    ] = 1,
) -> None:
    """Fine-tune a model (SFT / DPO / continued pretraining) as a recipe says; resumable."""
    from slmkit.config import dump_config
    from slmkit.recipe import load_recipe

    overrides = list(set_ or [])
    recipe = load_recipe(recipe_path, overrides)
    if print_config:
        out.print(dump_config(recipe), end="", markup=False)
        return
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_launch_torchrun(recipe_path, overrides, resume, force, nproc))
    from slmkit.train.run import is_main_process, train

    result = train(recipe, recipe_path.resolve().parent, resume=resume, force=force)
    if not is_main_process():
        return
    diag = result.diagnosis
    rate = f", {result.tokens_per_second:,.0f} tokens/s" if result.tokens_per_second else ""
    final = f"{result.final_loss:.4f}" if result.final_loss is not None else "-"
    info(f"diagnosis: {diag.status}: {diag.summary}")
    for advice in diag.advice:
        info(f"  advice: {advice}")
    info(
        f"{result.steps} steps, final loss {final}{rate}; loss plot: {result.run_dir / 'loss.png'}"
    )
    result_line(str(result.run_dir))


def _launch_torchrun(
    recipe_path: Path, overrides: list[str], resume: bool | None, force: bool, nproc: int
) -> int:
    """Start `nproc` copies of this command under torchrun and wait; returns their exit code."""
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "slmkit.cli",
        "train",
        str(recipe_path),
    ]
    for text in overrides:
        args += ["--set", text]
    if resume is not None:
        args.append("--resume" if resume else "--no-resume")
    if force:
        args.append("--force")
    env = dict(
        os.environ,
        OMP_NUM_THREADS=os.environ.get(
            "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc))
        ),
    )
    info(f"launching {nproc} processes with torchrun")
    return subprocess.run(args, env=env, check=False).returncode


def estimate_cmd(
    model: str = option(EstimateConfig, "model", "--model"),
    method: str = option(EstimateConfig, "method", "--method"),
    batch: int = option(EstimateConfig, "batch", "--batch"),
    cutoff: int = option(EstimateConfig, "cutoff", "--cutoff"),
    lora_r: int = option(EstimateConfig, "lora_r", "--lora-r"),
    gradient_checkpointing: bool = option(
        EstimateConfig, "gradient_checkpointing", "--gradient-checkpointing"
    ),
) -> None:
    """Estimate training and inference memory (weights, gradients, optimizer, activations) per precision."""
    from slmkit.train.estimate import estimate_memory, render_estimate

    settings = {
        "method": method,
        "batch": batch,
        "cutoff": cutoff,
        "lora_r": lora_r,
        "gradient_checkpointing": gradient_checkpointing,
    }
    out.print(render_estimate(estimate_memory(model, **settings)))


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("estimate")(estimate_cmd)
