"""Supervised fine-tuning (and continued pretraining) on pre-tokenized rows with transformers' Trainer.

Labels come from our data layer (assistant-only masks that work with any chat template), so
the plain Trainer is enough; TRL's SFTTrainer would re-tokenize and cannot mask SmolLM2's
template (see docs/train.md).
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Any

from slmkit.data.packing import PackedBatchCollator, PaddingCollator
from slmkit.data.template import IGNORE_INDEX
from slmkit.recipe import Recipe
from slmkit.train.callbacks import available_trackers
from slmkit.train.dataset import PreparedData


def common_arguments(
    recipe: Recipe, run_dir: Path, precision: str, has_val: bool
) -> dict[str, Any]:
    """TrainingArguments shared by SFT and DPO, from the recipe's `train:` section."""
    import torch

    t = recipe.train
    if isinstance(t.lr, str) or isinstance(t.epochs, str):
        raise ValueError("train.lr/epochs are still `auto`: apply train.schedule.choose_schedule")
    eval_strategy = "no" if not has_val else ("steps" if t.eval_steps else "epoch")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return dict(
        output_dir=str(run_dir / "checkpoints"),
        learning_rate=t.lr,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        optim=t.optimizer,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        seed=t.seed,
        data_seed=t.seed,
        # TensorBoard comes as a callback given this run's folder (callbacks.tensorboard_callbacks)
        report_to=[n for n in available_trackers(t.report_to) if n != "tensorboard"] or "none",
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataloader_num_workers=t.num_workers,
        disable_tqdm=True,
        ddp_find_unused_parameters=False if distributed else None,
        ddp_backend=("gloo" if not torch.cuda.is_available() else None) if distributed else None,
    )


def answer_token_loss(
    model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None
) -> tuple[Any, bool] | None:
    """Next-token loss computed only where a label exists, or None when the model cannot do that.

    The model's forward is asked for logits at the labelled positions only (`logits_to_keep` as a
    boolean mask, so per-family details like Gemma's logit soft-capping stay in the model), which
    skips the vocabulary projection and softmax for every prompt and padding token. Returns the
    loss and whether it is already normalised over the whole accumulated batch (when
    `num_items_in_batch` is given, as transformers' own loss does).
    """
    import torch

    labels = inputs.get("labels")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if labels is None or not _keeps_chosen_logits(type(base).forward):
        return None
    targets = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets != IGNORE_INDEX
    forward = {"use_cache": False, **{k: v for k, v in inputs.items() if k != "labels"}}
    logits = model(**forward, logits_to_keep=keep).logits
    total = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets[keep[:, :-1]], reduction="sum"
    )
    if num_items_in_batch is None:
        return total / keep.sum().clamp(min=1), False
    return total / num_items_in_batch, True


@functools.cache
def _keeps_chosen_logits(forward: Any) -> bool:
    """Whether a model class's forward takes `logits_to_keep` (read once per class, not per step)."""
    return "logits_to_keep" in inspect.signature(forward).parameters


def answer_token_trainer(base_class: Any) -> Any:
    """`base_class` (transformers' Trainer) computing the training loss with answer_token_loss."""

    class AnswerTokenTrainer(base_class):  # type: ignore[misc,valid-type]
        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            result = None
            if not return_outputs and self.label_smoother is None:
                result = answer_token_loss(model, inputs, num_items_in_batch)
            if result is None:
                self.loss_is_scaled_for_ga = None
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, self.loss_is_scaled_for_ga = result
            if self.args.average_tokens_across_devices and self.loss_is_scaled_for_ga:
                loss = loss * self.accelerator.num_processes
            return loss

    return AnswerTokenTrainer


def build_sft_trainer(
    recipe: Recipe,
    run_dir: Path,
    model: Any,
    tokenizer: Any,
    data: PreparedData,
    precision: str,
    callbacks: list[Any],
) -> Any:
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    args = common_arguments(recipe, run_dir, precision, has_val=bool(data.val_rows))
    grouped = recipe.train.group_by_length and not recipe.data.packing
    args["train_sampling_strategy"] = "group_by_length" if grouped else "random"
    if recipe.train.neftune_alpha is not None:
        args["neftune_noise_alpha"] = recipe.train.neftune_alpha
    train_set = Dataset.from_list(data.train_rows)
    if grouped:
        train_set = train_set.add_column("length", [len(r["input_ids"]) for r in data.train_rows])
    val_set = Dataset.from_list(data.val_rows) if data.val_rows else None
    collator: Any = PaddingCollator(
        tokenizer.pad_token_id, pad_to_multiple_of=8 if precision != "fp32" else None
    )
    if recipe.data.packing:  # one flattened row per batch; position ids keep samples apart
        collator = PackedBatchCollator(tokenizer.pad_token_id, flatten=True)
    trainer_class = answer_token_trainer(Trainer) if recipe.train.answer_logits_only else Trainer
    return trainer_class(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
