"""`slm train`: one function from a recipe to a finished run folder (resumable, diagnosed)."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit import console
from slmkit.config import dump_config
from slmkit.errors import ConfigError, SlmError
from slmkit.models.load import copy_sentencepiece_model
from slmkit.recipe import Recipe
from slmkit.registry.hooks import record_run
from slmkit.train import runfolder
from slmkit.train.config import PREFERENCE_METHODS
from slmkit.train.dataset import data_files, prepare_data
from slmkit.train.diagnosis import Diagnosis, diagnose
from slmkit.train.modeling import (
    check_device,
    count_parameters,
    load_base_model,
    load_tokenizer_for,
    make_trainable,
    resolve_base,
    resolve_precision,
)
from slmkit.train.schedule import choose_schedule, with_schedule


class TrainingDivergedError(SlmError):
    """The loss became NaN/inf; the run stopped and kept its last good checkpoint."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float | None
    diagnosis: Diagnosis
    tokens_per_second: float | None
    resumed_from: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def train(
    recipe: Recipe,
    recipe_dir: Path | None = None,
    *,
    resume: bool | None = None,
    force: bool = False,
) -> TrainResult:
    """Train what `recipe` says into `recipe.output_dir`; resume automatically from its last checkpoint."""
    from slmkit.models.load import quiet_transformers

    if not recipe.data.train:  # a recipe whose data all comes from its distill: stage
        raise ConfigError(
            "data.train: empty; this recipe's training data comes from its distill: stage",
            hint="run it with `slm run`, or add data files to data.train",
        )
    check_device(recipe)
    recipe_dir = (recipe_dir or Path.cwd()).resolve()
    if recipe.method == "grpo":  # a reward that cannot be imported fails before the model loads
        from slmkit.train.rewards import reward_functions

        reward_functions(recipe.grpo, recipe_dir)
    run_dir = Path(recipe.output_dir).expanduser().resolve()
    base = resolve_base(recipe)
    manifest = runfolder.build_manifest(
        recipe, base.ref, base.hf_path, data_files(recipe, recipe_dir), base.init_adapter
    )
    checkpoint = _decide_resume(run_dir, manifest, resume, force)
    # transformers and TRL load only now: a refused resume or a bad device answers in seconds
    from transformers import PrinterCallback, set_seed

    from slmkit.train.callbacks import (
        MetricsFileCallback,
        NanStopCallback,
        ProgressCallback,
        tensorboard_callbacks,
    )

    quiet_transformers()
    precision, described_precision = resolve_precision(recipe)
    tokenizer = load_tokenizer_for(base, recipe.data.template)
    data = prepare_data(recipe, recipe_dir, tokenizer)
    set_seed(
        recipe.train.seed
    )  # adapter init draws from the global RNG before the Trainer seeds it
    model = make_trainable(
        recipe, load_base_model(recipe, base, tokenizer), base, recipe.train.gradient_checkpointing
    )
    trainable, total = count_parameters(model)
    rows, adapter = data.size, recipe.finetuning in ("lora", "qlora")
    base_params = total - trainable if adapter else total  # the model's size, not its adapter's
    world = int(os.environ.get("WORLD_SIZE", "1"))
    schedule = choose_schedule(recipe, rows, base_params, world)
    recipe = with_schedule(recipe, schedule)
    if is_main_process():
        _start_run_folder(run_dir, recipe, manifest, checkpoint)
        console.info(
            f"training {recipe.method}/{recipe.finetuning} on {base.ref}: {trainable:,} of {total:,} "
            f"parameters trainable, {_describe_data(data.stats)}, "
            f"precision {described_precision}"
        )
        if schedule.why:
            console.info(f"schedule (auto): {schedule.why}")
    progress, nan_stop = ProgressCallback(f"{recipe.method} {run_dir.name}"), NanStopCallback()
    callbacks = [MetricsFileCallback(run_dir / "metrics.jsonl"), nan_stop, progress]
    callbacks += tensorboard_callbacks(recipe.train.report_to, run_dir / "tensorboard")
    trainer = _build_trainer(recipe, run_dir, model, tokenizer, data, precision, callbacks)
    trainer.remove_callback(
        PrinterCallback
    )  # our progress bar and metrics.jsonl replace its dict prints
    started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except BaseException as exc:
        if is_main_process():
            runfolder.mark_stopped(run_dir, exc)
        raise
    finally:
        progress.close()
    seconds = time.perf_counter() - started
    summary = {
        "steps": trainer.state.global_step,
        "train_seconds": round(seconds, 1),
        "tokens_per_second": _tokens_per_second(trainer, seconds, checkpoint),
        "trainable_params": trainable,
        "total_params": total,
        "data_stats": data.stats,
        "precision": precision,
        "resumed_from": str(checkpoint) if checkpoint else None,
        "train_loss_mean": output.training_loss,
    }
    summary.update(rank_agreement(trainer.model))
    return _finish(run_dir, recipe, trainer, tokenizer, manifest, summary, nan_stop.bad_step)


def rank_agreement(model: Any) -> dict[str, Any]:
    """World size and a checksum of the trainable weights of every rank (they must agree under DDP)."""
    import torch

    checksum = float(sum(p.detach().double().sum() for p in model.parameters() if p.requires_grad))
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    checksums: list[Any] = [checksum]
    if world > 1:
        checksums = [None] * world
        torch.distributed.all_gather_object(checksums, checksum)
    return {"world_size": world, "rank_weight_checksums": checksums}


def _build_trainer(
    recipe: Recipe,
    run_dir: Path,
    model: Any,
    tokenizer: Any,
    data: Any,
    precision: str,
    callbacks: list[Any],
) -> Any:
    if recipe.method == "grpo":
        from slmkit.train.grpo import build_grpo_trainer

        return build_grpo_trainer(recipe, run_dir, model, tokenizer, data, precision, callbacks)
    if recipe.method == "reward":
        from slmkit.train.reward import build_reward_trainer

        return build_reward_trainer(recipe, run_dir, model, tokenizer, data, precision, callbacks)
    if recipe.method == "kto":
        from slmkit.train.kto import build_kto_trainer

        return build_kto_trainer(recipe, run_dir, model, tokenizer, data, precision, callbacks)
    if recipe.method in PREFERENCE_METHODS:
        from slmkit.train.dpo import build_dpo_trainer

        return build_dpo_trainer(recipe, run_dir, model, tokenizer, data, precision, callbacks)
    from slmkit.train.sft import build_sft_trainer

    return build_sft_trainer(recipe, run_dir, model, tokenizer, data, precision, callbacks)


def _decide_resume(
    run_dir: Path, manifest: dict[str, Any], resume: bool | None, force: bool
) -> Path | None:
    """The checkpoint to continue from, or None to start fresh (after checking lineage)."""
    checkpoint = runfolder.last_checkpoint(run_dir)
    if resume is False:
        if checkpoint is not None and is_main_process():
            console.info(f"--no-resume: starting over in {run_dir} (old checkpoints removed)")
            for name in (runfolder.CHECKPOINTS, "tensorboard", "metrics.jsonl"):
                path = run_dir / name
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(
                    missing_ok=True
                )
        return None
    if checkpoint is None:
        if resume:
            raise ConfigError(f"{run_dir}: --resume given but the run folder has no checkpoint")
        return None
    old_path = run_dir / runfolder.MANIFEST
    if old_path.is_file() and not force:
        runfolder.check_lineage(json.loads(old_path.read_text()), manifest, run_dir)
    if is_main_process():
        console.info(f"resuming from {checkpoint}")
    return checkpoint


def _start_run_folder(
    run_dir: Path, recipe: Recipe, manifest: dict[str, Any], checkpoint: Path | None
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if checkpoint is not None:
        from slmkit.train.callbacks import truncate_metrics

        truncate_metrics(run_dir / "metrics.jsonl", int(checkpoint.name.split("-")[-1]))
    else:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    (run_dir / "recipe.yaml").write_text(dump_config(recipe))
    runfolder.write_json(run_dir / runfolder.MANIFEST, manifest)


def _describe_data(stats: dict[str, Any]) -> str:
    if "pairs" in stats:
        return f"{stats['pairs']} preference pairs"
    if "prompts" in stats:
        return f"{stats['prompts']} prompts"
    if "rated" in stats:
        return (
            f"{stats['rated']} rated answers ({stats['thumbs_up']} up, {stats['thumbs_down']} down)"
        )
    text = f"{stats['samples']} samples / {stats['tokens']:,} tokens"
    return text + (f" packed into {stats['packed_rows']} rows" if "packed_rows" in stats else "")


def _tokens_per_second(trainer: Any, seconds: float, checkpoint: Path | None) -> float | None:
    seen = trainer.state.num_input_tokens_seen
    start = getattr(trainer, "_initial_num_input_tokens_seen", 0) if checkpoint else 0
    return round((seen - start) / seconds, 1) if seen and seconds > 0 else None


def _finish(
    run_dir: Path,
    recipe: Recipe,
    trainer: Any,
    tokenizer: Any,
    manifest: dict[str, Any],
    summary: dict[str, Any],
    bad_step: int | None,
) -> TrainResult:
    rows = runfolder.read_metrics(run_dir) if is_main_process() else []
    train_losses = [v for _, v in runfolder.loss_series(rows, "loss")]
    val_losses = [v for _, v in runfolder.loss_series(rows, "eval_loss")]
    summary["final_loss"] = train_losses[-1] if train_losses else None
    if bad_step is not None:  # the stopping log may hold a finite loss with a NaN gradient norm
        train_losses.append(math.nan)
    diagnosis = diagnose(train_losses, val_losses)
    summary["diagnosis"] = diagnosis.to_dict()
    if bad_step is None:
        _save_outputs(recipe, trainer, tokenizer, run_dir)
    if is_main_process():
        manifest["status"] = "diverged" if bad_step is not None else "finished"
        runfolder.write_json(run_dir / runfolder.MANIFEST, manifest)
        run_summary = {k: v for k, v in summary.items() if k != "diagnosis"}
        runfolder.write_json(
            run_dir / "diagnosis.json", {**diagnosis.to_dict(), "run": run_summary}
        )
        runfolder.plot_loss(run_dir, rows)
        runfolder.write_model_card(run_dir, manifest, summary)
        if bad_step is None:
            record_run(run_dir)  # a version in the registry; a registry problem only warns
    if bad_step is not None:
        last = runfolder.last_checkpoint(run_dir)
        raise TrainingDivergedError(
            f"loss became NaN/inf at step {bad_step}; stopped (last good checkpoint: {last or 'none'})",
            hint=f"{diagnosis.advice[0]}; see {run_dir / 'diagnosis.json'}",
        )
    return TrainResult(
        run_dir,
        summary["steps"],
        summary["final_loss"],
        diagnosis,
        summary["tokens_per_second"],
        summary["resumed_from"],
        summary,
    )


def _save_outputs(recipe: Recipe, trainer: Any, tokenizer: Any, run_dir: Path) -> None:
    """adapter/ (LoRA, QLoRA) or model/ (full, freeze), each with tokenizer and chat template.

    Every rank calls this: `trainer.save_model` gathers ZeRO-3 / FSDP shards (a collective) before
    rank 0 writes; unwrapping the model on rank 0 alone would save rank 0's shards only.
    """
    adapter = recipe.finetuning in ("lora", "qlora")
    target = run_dir / ("adapter" if adapter else "model")
    main = trainer.accelerator.is_main_process
    if main:
        shutil.rmtree(target, ignore_errors=True)
    if trainer.is_fsdp_enabled:  # save_model writes nothing from a sharded state dict
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(target))  # weights + processing_class (the tokenizer, chat template)
    trainer.accelerator.wait_for_everyone()
    if main:
        _drop_trainer_extras(target, trainer.accelerator.unwrap_model(trainer.model))
        copy_sentencepiece_model([getattr(tokenizer, "name_or_path", None)], target)


def _drop_trainer_extras(target: Path, model: Any) -> None:
    """Remove what save_model adds beside the model: training_args.bin, other adapters (DPO's "ref")."""
    (target / "training_args.bin").unlink(missing_ok=True)
    for name in getattr(model, "peft_config", {}):
        if name != "default":
            shutil.rmtree(target / name, ignore_errors=True)
