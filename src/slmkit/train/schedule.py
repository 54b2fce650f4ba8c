"""`train.lr: auto` and `train.epochs: auto`: a learning rate from the model's size and the way it
is tuned, and a number of passes from the data's size, so that a small set of facts gets enough
optimizer steps to be learned. What was chosen, and why, is printed when training starts and saved
in the run's recipe.yaml.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slmkit.recipe import Recipe
from slmkit.train.config import PREFERENCE_METHODS

# methods that move an already useful model by what is rated or rewarded: small learning rates,
# and no extra passes for small sets (those are for learning facts by SFT)
REWARD_METHODS = (*PREFERENCE_METHODS, "grpo", "reward")

AUTO = "auto"
# Small sets: at least this many optimizer steps (a 135M model learned 24 invented facts from 6
# wordings each in about 200 steps of 4 at lr 1e-3; docs/benchmarks.md, "Small fact sets").
MIN_STEPS = 200
MAX_EPOCHS = 10
DEFAULT_EPOCHS = 3  # LLaMA-Factory's and transformers' default; also for DPO pairs


@dataclass(frozen=True)
class Schedule:
    lr: float
    epochs: float
    why: str  # one line for the log; empty when the recipe set both values


def auto_lr(recipe: Recipe, params: int) -> tuple[float, str]:
    """The peak learning rate for this method, fine-tuning type and model size, with the reason."""
    size = _size(params)
    adapter = recipe.finetuning in ("lora", "qlora")
    if recipe.method == "reward":  # TRL's reward-modelling examples; the new head trains whole
        return (1e-4, "a reward model's adapter") if adapter else (1e-5, "a reward model's weights")
    if recipe.method == "grpo" and adapter:  # sampled answers move slowly: half of SFT's rate
        rate = 5e-4 if params < 1_000_000_000 else 2.5e-4 if params < 4_000_000_000 else 1e-4
        return rate, f"GRPO on a {recipe.finetuning} adapter of a {size} model"
    if recipe.method in REWARD_METHODS:
        name = recipe.method.upper()
        return (
            (5e-5, f"{name} on a {recipe.finetuning} adapter")
            if adapter
            else (1e-6, f"{name} of all {size} weights")
        )
    if recipe.init.mode == "random":
        return 3e-3, f"a {size} model trained from a random init"
    if adapter:
        if params < 1_000_000_000:
            return 1e-3, f"{recipe.finetuning} on a {size} model"
        if params < 4_000_000_000:
            return 5e-4, f"{recipe.finetuning} on a {size} model"
        return 2e-4, f"{recipe.finetuning} on a {size} model"
    what = "the last layers" if recipe.finetuning == "freeze" else "all weights"
    return (5e-5 if params < 1_000_000_000 else 1e-5), f"{what} of a {size} model"


def auto_epochs(recipe: Recipe, rows: int, world_size: int = 1) -> tuple[float, str]:
    """Passes over `rows` training rows: 3, or for SFT on a small set more (up to 10) until there
    are MIN_STEPS optimizer steps."""
    t = recipe.train
    per_step = t.batch_size * t.grad_accum * max(1, world_size)
    steps_per_epoch = max(1, math.ceil(rows / per_step))
    epochs = DEFAULT_EPOCHS
    if recipe.method not in REWARD_METHODS and steps_per_epoch * DEFAULT_EPOCHS < MIN_STEPS:
        epochs = min(MAX_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch))
        reason = (
            f"{epochs} passes over {rows} rows = {epochs * steps_per_epoch} steps of {per_step} "
            f"(a small set needs about {MIN_STEPS} steps to learn its facts"
            + (f"; at most {MAX_EPOCHS} passes)" if epochs == MAX_EPOCHS else ")")
        )
        return epochs, reason
    return (
        epochs,
        f"{epochs} passes over {rows} rows = {epochs * steps_per_epoch} steps of {per_step}",
    )


def choose_schedule(recipe: Recipe, rows: int, params: int, world_size: int = 1) -> Schedule:
    """The learning rate and passes this run uses: the recipe's own, or auto ones with their reason."""
    t = recipe.train
    lr, epochs, reasons = t.lr, t.epochs, []
    if lr == AUTO:
        lr, why = auto_lr(recipe, params)
        reasons.append(f"lr {lr:g} for {why}")
    if epochs == AUTO:
        if t.max_steps > 0:
            epochs = DEFAULT_EPOCHS  # ignored: max_steps decides
        else:
            epochs, why = auto_epochs(recipe, rows, world_size)
            reasons.append(why)
    assert not isinstance(lr, str) and not isinstance(epochs, str)
    return Schedule(float(lr), float(epochs), "; ".join(reasons))


def with_schedule(recipe: Recipe, schedule: Schedule) -> Recipe:
    """The recipe with the chosen values written in (what the run folder's recipe.yaml records)."""
    train = recipe.train.model_copy(update={"lr": schedule.lr, "epochs": schedule.epochs})
    return recipe.model_copy(update={"train": train})


def _size(params: int) -> str:
    return f"{params / 1e9:.1f}B" if params >= 1_000_000_000 else f"{params / 1e6:.0f}M"
