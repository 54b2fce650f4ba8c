"""Preference pairs with TRL's DPOTrainer: DPO, and ORPO / SimPO with its loss replaced.

DPO's reference model is the policy with its adapter switched off (a fresh adapter), or a
frozen copy of the SFT adapter when `dpo.from_run` continues an SFT run (TRL adds it as "ref").
ORPO and SimPO use no reference (`train.reference_free`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmkit.recipe import Recipe
from slmkit.train.dataset import PreparedData
from slmkit.train.sft import common_arguments

DPO_VAL_KEY = "eval_loss"


def build_dpo_trainer(
    recipe: Recipe,
    run_dir: Path,
    model: Any,
    tokenizer: Any,
    data: PreparedData,
    precision: str,
    callbacks: list[Any],
) -> Any:
    from trl import DPOConfig, DPOTrainer

    args, train_set, val_set = rated_inputs(
        recipe, run_dir, precision, data.preference_rows, data.val_preference_rows
    )
    settings, method = recipe.dpo, recipe.method
    beta, dpo_ftx = settings.beta_for(method), settings.ftx if method == "dpo" else 0.0
    config = DPOConfig(
        **args,
        beta=beta,
        loss_type=[settings.loss_type, *(["sft"] if dpo_ftx else [])],
        loss_weights=[1.0, dpo_ftx] if dpo_ftx else None,
        max_length=recipe.data.cutoff_len,
        dataset_num_proc=None,
    )
    trainer_class = pretokenized(DPOTrainer)
    extra: dict[str, Any] = {}
    if method in ("orpo", "simpo"):
        from slmkit.train.reference_free import reference_free

        trainer_class = reference_free(
            trainer_class, method, beta, settings.simpo_gamma, settings.ftx
        )
        # no reference model to build: a full fine-tune would load a second copy of the weights
        if not _is_peft(model):
            extra["ref_model"] = model
    return trainer_class(
        model=model,
        **extra,
        args=config,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def rated_inputs(
    recipe: Recipe,
    run_dir: Path,
    precision: str,
    rows: list[dict[str, Any]],
    val_rows: list[dict[str, Any]],
) -> tuple[dict[str, Any], Any, Any]:
    """What every trainer of rated answers (DPO, ORPO, SimPO, KTO, reward models) starts from:
    the shared TrainingArguments and the pretokenized train and validation sets."""
    from datasets import Dataset

    score_only_labelled_positions()
    args = common_arguments(recipe, run_dir, precision, has_val=bool(val_rows))
    args["include_num_input_tokens_seen"] = "no"  # their batches have no plain input_ids column
    return args, Dataset.from_list(rows), Dataset.from_list(val_rows) if val_rows else None


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def pretokenized(trainer_class: Any) -> Any:
    """The trainer class, taking rows that are already `prompt_ids / chosen_ids / rejected_ids`
    (see `data.preference`) as they are instead of rendering and tokenizing them again."""

    class PretokenizedDPOTrainer(trainer_class):  # type: ignore[misc, valid-type]
        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            if "prompt_ids" in getattr(dataset, "column_names", []):
                return dataset
            return super()._prepare_dataset(dataset, *args, **kwargs)

    return PretokenizedDPOTrainer


def score_only_labelled_positions() -> None:
    """Let TRL's fused log-prob head score only the answer tokens on a CPU, as it does on CUDA.

    TRL compacts the hidden states to the labelled positions only where Triton runs, because
    elsewhere (Neuron) a changing shape recompiles; eager CPU has no such cost, yet without this it
    projects every prompt and padding position onto the whole vocabulary in plain torch, which was
    most of a DPO step here. The kernel that folds the logits is unchanged (torch tiles on a CPU).
    """
    import trl.trainer.utils as trl_utils

    use_triton = getattr(trl_utils, "_use_triton", None)
    if use_triton is None or getattr(use_triton, "slmkit_compact", False):
        return  # another TRL layout, or already done

    def compact_on_cpu(device: Any) -> bool:
        return device.type == "cpu" or bool(use_triton(device))

    compact_on_cpu.slmkit_compact = True  # type: ignore[attr-defined]
    compact_on_cpu.original = use_triton  # type: ignore[attr-defined]
    trl_utils._use_triton = compact_on_cpu
