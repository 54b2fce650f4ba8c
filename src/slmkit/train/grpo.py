"""GRPO (Shao et al., 2024; how the DeepSeek-R1 distills were made) with TRL's GRPOTrainer: for
each prompt, `grpo.num_generations` answers are sampled and scored by the recipe's rewards; each
answer's advantage is its reward against its group's mean, so no value model and no reference
pass (unless `grpo.beta` > 0) are needed.

`train.batch_size` counts prompts per step: a step trains on batch_size x num_generations answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmkit.recipe import Recipe
from slmkit.train.dataset import PreparedData
from slmkit.train.rewards import reward_functions
from slmkit.train.sft import common_arguments


def build_grpo_trainer(
    recipe: Recipe,
    run_dir: Path,
    model: Any,
    tokenizer: Any,
    data: PreparedData,
    precision: str,
    callbacks: list[Any],
) -> Any:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    settings = recipe.grpo
    rewards: list[Any] = list(reward_functions(settings))
    args = common_arguments(recipe, run_dir, precision, has_val=False)
    args["include_num_input_tokens_seen"] = "no"  # batches are generated, not read
    args["per_device_train_batch_size"] = recipe.train.batch_size * settings.num_generations
    args["per_device_eval_batch_size"] = args["per_device_train_batch_size"]
    config = GRPOConfig(
        **args,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_len,
        temperature=settings.temperature,
        beta=settings.beta,
        reward_weights=settings.reward_weights,
        log_completions=False,
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=config,
        train_dataset=Dataset.from_list(data.prompt_rows),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
