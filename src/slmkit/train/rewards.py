"""GRPO's rewards: the gateway's answer checks as scores, and any Python function a recipe names.

Each reward takes TRL's keyword lists (`prompts`, `completions`, and every column of the prompt
file: `must_include`, `must_not_include`, `reference`, `response_format`) and returns one float
per completion. The built-in ones score the answer without its reasoning, as the gateway checks it.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmkit.answer_checks import find_repetition, json_problem
from slmkit.errors import ConfigError
from slmkit.models.reasoning import split_reasoning
from slmkit.train.config import GrpoSection

RewardFunction = Callable[..., list[float]]
JSON_INSIDE = 0.25
REPETITION_UNIT, REPETITION_REPEATS = 4, 4  # the gateway's repetition guard defaults


def completion_text(completion: Any) -> str:
    """The answer of one completion (conversational: its assistant messages), reasoning left out."""
    if isinstance(completion, list):
        completion = "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    return split_reasoning(str(completion))[1]


def reward_functions(settings: GrpoSection, recipe_dir: Path | None = None) -> list[RewardFunction]:
    """The recipe's rewards as functions TRL calls, each named after its entry; `module:function`
    is imported with the recipe's folder on the Python path."""
    if recipe_dir is not None and str(recipe_dir) not in sys.path:
        sys.path.insert(0, str(recipe_dir))
    functions = []
    for index, name in enumerate(settings.rewards):
        if name.startswith("reward:"):
            function = _reward_model(name)
        else:
            function = _builtin(name, settings) if ":" not in name else _imported(name, index)
        functions.append(function)
    return functions


def _builtin(name: str, settings: GrpoSection) -> RewardFunction:
    def score_all(completions: list[Any], **columns: Any) -> list[float]:
        rows = [
            {key: values[i] for key, values in columns.items() if isinstance(values, list)}
            for i in range(len(completions))
        ]
        return [
            score(name, completion_text(c), row, settings)
            for c, row in zip(completions, rows, strict=True)
        ]

    score_all.__name__ = name  # TRL logs each reward under its function's name
    return score_all


def score(name: str, answer: str, row: dict[str, Any], settings: GrpoSection) -> float:
    """One built-in reward of one answer; `row` holds its prompt's columns."""
    lowered = answer.lower()
    if name == "json_schema":
        response_format = _response_format(row.get("response_format")) or settings.response_format
        if response_format is None:
            response_format = {"type": "json_object"}
        problem = json_problem(answer.strip(), response_format)
        if problem is None:
            return 1.0
        if not problem.startswith("not JSON"):
            return 0.5
        # partial credit for JSON wrapped in a code fence or prose: a signal to start from when
        # no sampled answer is bare JSON yet (the gateway's check still fails such an answer)
        return JSON_INSIDE if _json_inside(answer) else 0.0
    if name == "must_include":
        phrases = row.get("must_include") or []
        if not phrases:
            return 0.0
        return sum(p.lower() in lowered for p in phrases) / len(phrases)
    if name == "must_not_include":
        phrases = [*(row.get("must_not_include") or []), *settings.must_not_include]
        return 0.0 if any(p.lower() in lowered for p in phrases) else 1.0
    if name == "not_empty":
        return 1.0 if answer.strip() else 0.0
    if name == "no_repetition":
        looped = find_repetition(answer, REPETITION_UNIT, REPETITION_REPEATS) is not None
        return 0.0 if looped else 1.0
    if name == "no_refusal":
        return 0.0 if any(p.lower() in lowered for p in settings.refusal) else 1.0
    if name == "length":
        words, limit = len(answer.split()), settings.max_words
        return max(0.0, min(1.0, 2.0 - words / limit))
    raise ValueError(f"unknown reward {name!r}")


def _json_inside(text: str) -> bool:
    """Whether an object parses from the first `{` to the last `}` of the text."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return False
    try:
        return isinstance(json.loads(text[start : end + 1]), dict)
    except ValueError:
        return False


def _response_format(value: Any) -> dict[str, Any] | None:
    """A prompt's response_format column (kept as JSON text in the dataset)."""
    if not value:
        return None
    return json.loads(value) if isinstance(value, str) else value


@functools.lru_cache(maxsize=4)
def _loaded_reward_model(ref: str) -> Any:
    """One load per reward model: `slm train` checks the rewards before loading the policy, and
    the trainer asks for them again."""
    from slmkit.models.reward import RewardModel

    return RewardModel.load(ref)


def _reward_model(ref: str) -> RewardFunction:
    """A reward model's score of each completion to its prompt."""
    model = _loaded_reward_model(ref)

    def score_all(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        conversations = [
            p if isinstance(p, list) else [{"role": "user", "content": p}] for p in prompts
        ]
        return model.score(conversations, [completion_text(c) for c in completions])

    score_all.__name__ = "reward_model"
    return score_all


def _imported(path: str, index: int) -> RewardFunction:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"grpo.rewards[{index}]: cannot import {module_name!r} ({exc})",
            hint="give a module on the Python path (the recipe's folder is on it) as module:function",
        ) from exc
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigError(f"grpo.rewards[{index}]: {module_name!r} has no function {attribute!r}")
    return _checked(function, path)


def _checked(function: Callable[..., Any], path: str) -> RewardFunction:
    """`function`, with a clear error when it returns anything but one number per completion."""

    def call(completions: list[Any], **kwargs: Any) -> list[float]:
        values = function(completions=completions, **kwargs)
        if not isinstance(values, list | tuple) or len(values) != len(completions):
            raise ConfigError(
                f"reward {path}: returned {type(values).__name__} of "
                f"{len(values) if hasattr(values, '__len__') else '?'} values for "
                f"{len(completions)} completions (expected a list of one float each)"
            )
        try:
            return [float(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"reward {path}: returned a value that is not a number ({exc})"
            ) from exc

    call.__name__ = path.replace(".", "_").replace(":", "_")
    return call
