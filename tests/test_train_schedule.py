"""`train.lr: auto` / `train.epochs: auto`: what is chosen, why, and that set values are kept."""

from __future__ import annotations

from typing import Any

import pytest

from slmkit.recipe import Recipe
from slmkit.train.schedule import MAX_EPOCHS, MIN_STEPS, choose_schedule, with_schedule

M135 = 135_000_000


def _recipe(**sections: Any) -> Recipe:
    return Recipe.model_validate({"model": "default", "data": {"train": ["x.jsonl"]}, **sections})


def test_a_small_set_gets_enough_steps_and_a_lora_rate_for_a_small_model() -> None:
    schedule = choose_schedule(_recipe(), rows=144, params=M135)
    assert schedule.lr == 1e-3 and schedule.epochs == 6  # 36 steps of 4 per pass -> 216 steps
    assert schedule.why == (
        "lr 0.001 for lora on a 135M model; 6 passes over 144 rows = 216 steps of 4 "
        f"(a small set needs about {MIN_STEPS} steps to learn its facts)"
    )


def test_a_tiny_set_stops_at_the_most_passes() -> None:
    schedule = choose_schedule(_recipe(), rows=40, params=M135)
    assert schedule.epochs == MAX_EPOCHS and f"at most {MAX_EPOCHS} passes" in schedule.why


def test_a_large_set_gets_three_passes() -> None:
    schedule = choose_schedule(_recipe(), rows=5000, params=M135)
    assert schedule.epochs == 3 and "3 passes over 5000 rows = 3750 steps of 4" in schedule.why


def test_steps_count_the_whole_optimizer_batch_across_processes() -> None:
    recipe = _recipe(train={"batch_size": 2, "grad_accum": 4})
    assert choose_schedule(recipe, rows=400, params=M135, world_size=2).epochs == 8  # 25 steps/pass


@pytest.mark.parametrize(
    ("sections", "params", "lr"),
    [
        ({}, 7_000_000_000, 2e-4),
        ({}, 1_500_000_000, 5e-4),
        ({"finetuning": "qlora"}, 8_000_000_000, 2e-4),
        ({"finetuning": "full"}, M135, 5e-5),
        ({"finetuning": "full"}, 3_000_000_000, 1e-5),
        ({"finetuning": "freeze"}, M135, 5e-5),
        ({"method": "dpo"}, M135, 5e-5),
        ({"method": "dpo", "finetuning": "full"}, M135, 1e-6),
        ({"method": "kto"}, M135, 5e-5),
        ({"method": "simpo", "finetuning": "full"}, M135, 1e-6),
        ({"method": "grpo"}, M135, 5e-4),
        ({"method": "grpo"}, 7_000_000_000, 1e-4),
        ({"method": "grpo", "finetuning": "full"}, M135, 1e-6),
        ({"method": "reward"}, M135, 1e-4),
        ({"method": "pt", "finetuning": "full", "init": {"mode": "random"}}, 20_000_000, 3e-3),
    ],
)
def test_the_rate_follows_method_type_and_size(
    sections: dict[str, Any], params: int, lr: float
) -> None:
    assert choose_schedule(_recipe(**sections), rows=1000, params=params).lr == lr


@pytest.mark.parametrize("method", ["dpo", "kto", "orpo", "simpo", "grpo", "reward"])
def test_rated_and_rewarded_data_get_three_passes_however_few(method: str) -> None:
    assert choose_schedule(_recipe(method=method), rows=20, params=M135).epochs == 3


def test_values_the_recipe_sets_are_kept_and_not_explained() -> None:
    recipe = _recipe(train={"lr": 2e-4, "epochs": 1.5})
    schedule = choose_schedule(recipe, rows=40, params=M135)
    assert (schedule.lr, schedule.epochs, schedule.why) == (2e-4, 1.5, "")
    steps = choose_schedule(_recipe(train={"max_steps": 30}), rows=40, params=M135)
    assert steps.why == "lr 0.001 for lora on a 135M model"  # max_steps decides the length


def test_the_run_records_the_chosen_values() -> None:
    recipe = _recipe()
    chosen = with_schedule(recipe, choose_schedule(recipe, rows=144, params=M135))
    assert (chosen.train.lr, chosen.train.epochs) == (1e-3, 6.0)
    assert (recipe.train.lr, recipe.train.epochs) == ("auto", "auto")
