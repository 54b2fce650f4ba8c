"""KTO (Ethayarajh et al., 2024) with TRL's KTOTrainer: learning from answers rated good or bad
one at a time (a thumbs up or down), where DPO needs a good and a bad answer to the same prompt.

The rows arrive tokenized by our data layer (`prompt_ids`, `completion_ids`, `label`), like DPO's
pairs; the reference model is the policy with its adapter off, or the SFT adapter of
`dpo.from_run`. With more thumbs of one kind than the other, `dpo.desirable_weight: auto` weighs
the thumbs-up loss so that up x weight is within 1 to 4/3 of down x undesirable_weight (the
paper's rule, which TRL only warns about).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmkit.recipe import Recipe
from slmkit.train.dataset import PreparedData
from slmkit.train.dpo import rated_inputs


def desirable_weight(recipe: Recipe, rows: list[dict[str, Any]]) -> float:
    """The thumbs-up weight: the recipe's, or one that balances the two kinds of thumbs."""
    chosen = recipe.dpo.desirable_weight
    if chosen != "auto":
        return float(chosen)
    up = sum(1 for row in rows if row["label"])
    down = len(rows) - up
    if not up or not down:
        return 1.0
    # the paper's range for up * w_up / (down * w_down) is [1, 4/3]: keep 1 inside it, else aim
    # at its middle
    down_weight = down * recipe.dpo.undesirable_weight
    if 1.0 <= up / down_weight <= 4 / 3:
        return 1.0
    return round(down_weight / up * 7 / 6, 3)


def build_kto_trainer(
    recipe: Recipe,
    run_dir: Path,
    model: Any,
    tokenizer: Any,
    data: PreparedData,
    precision: str,
    callbacks: list[Any],
) -> Any:
    from trl import KTOConfig, KTOTrainer

    args, train_set, val_set = rated_inputs(
        recipe, run_dir, precision, data.preference_rows, data.val_preference_rows
    )
    config = KTOConfig(
        **args,
        beta=recipe.dpo.beta_for("kto"),
        desirable_weight=desirable_weight(recipe, data.preference_rows),
        undesirable_weight=recipe.dpo.undesirable_weight,
        max_length=recipe.data.cutoff_len,
        dataset_num_proc=None,
    )
    return pretokenized_kto(KTOTrainer)(
        model=model,
        args=config,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def pretokenized_kto(trainer_class: Any) -> Any:
    """KTOTrainer taking `prompt_ids / completion_ids / label` rows as they are; it only adds the
    mismatched completions of its KL estimate (each prompt with the previous row's answer, within
    a batch), as TRL does after tokenizing."""

    class PretokenizedKTOTrainer(trainer_class):  # type: ignore[misc, valid-type]
        def _prepare_dataset(
            self, dataset: Any, processing_class: Any, args: Any, dataset_name: str
        ) -> Any:
            if "prompt_ids" not in getattr(dataset, "column_names", []):
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if not self.calculate_KL:
                return dataset
            size = args.per_device_train_batch_size

            def rotate(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
                answers = batch["completion_ids"]
                batch["KL_completion_ids"] = answers[-1:] + answers[:-1]
                return batch

            return dataset.map(rotate, batched=True, batch_size=size)

    return PretokenizedKTOTrainer
