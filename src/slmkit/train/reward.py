"""A reward model with TRL's RewardTrainer: the base model with a score head (one number per
conversation) trained on preference pairs so that the chosen answer scores above the rejected one
(Bradley-Terry). It judges answers (`slm eval --judge reward:RUN`) and rewards GRPO
(`grpo.rewards: [reward:RUN]`); see slmkit.models.reward.

The pairs arrive tokenized by our data layer, as for DPO: each side is the prompt as inference
renders it followed by that answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmkit.recipe import Recipe
from slmkit.train.dataset import PreparedData
from slmkit.train.dpo import rated_inputs

REWARD_VAL_KEY = "eval_loss"


def reward_rows(preference_rows: list[dict[str, Any]]) -> list[dict[str, list[int]]]:
    """`prompt_ids / chosen_ids / rejected_ids` -> whole sequences, as the RewardTrainer takes them."""
    return [
        {
            "chosen_ids": row["prompt_ids"] + row["chosen_ids"],
            "rejected_ids": row["prompt_ids"] + row["rejected_ids"],
        }
        for row in preference_rows
    ]


def build_reward_trainer(
    recipe: Recipe,
    run_dir: Path,
    model: Any,
    tokenizer: Any,
    data: PreparedData,
    precision: str,
    callbacks: list[Any],
) -> Any:
    from trl import RewardConfig, RewardTrainer

    args, train_set, val_set = rated_inputs(
        recipe,
        run_dir,
        precision,
        reward_rows(data.preference_rows),
        reward_rows(data.val_preference_rows),
    )
    config = RewardConfig(**args, max_length=recipe.data.cutoff_len, dataset_num_proc=None)
    return RewardTrainer(
        model=model,
        args=config,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
