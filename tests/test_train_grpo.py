"""GRPO: prompt sets, the answer checks as rewards, a recipe's own `module:function` reward, and
training that raises the reward; plus `slm eval`'s json_valid for prompts that ask for JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import REPO, run_slm
from train_helpers import read_jsonl, tiny_recipe, write_jsonl, write_recipe

TICKETS = REPO / "examples" / "data" / "tickets_train.jsonl"
SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "qty": {"type": "integer"}},
    "required": ["id", "qty"],
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "order", "schema": SCHEMA}}


def settings(**values: object):
    from slmkit.train.config import GrpoSection

    return GrpoSection(**values)


# --- prompt sets -------------------------------------------------------------------------------


def test_prompt_rows_from_every_shape(tmp_path: Path) -> None:
    from slmkit.data.prompts import load_prompts

    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {
                "prompt": "Order K-1, 2 boots as JSON.",
                "system": "JSON only.",
                "response_format": FORMAT,
            },
            {
                "messages": [{"role": "user", "content": "Return window?"}],
                "must_include": "41 days",
            },
            {
                "messages": [
                    {"role": "user", "content": "Hours?"},
                    {"role": "assistant", "content": "9 to 5."},
                ],
                "must_not_include": ["24/7"],
            },
        ],
    )
    prompts = load_prompts([path])
    assert not prompts.problems
    first, second, third = prompts.rows
    assert first["prompt"] == [
        {"role": "system", "content": "JSON only."},
        {"role": "user", "content": "Order K-1, 2 boots as JSON."},
    ]
    assert json.loads(first["response_format"]) == FORMAT
    assert second["must_include"] == ["41 days"] and second["response_format"] == ""
    # a training conversation: its answer becomes the reference, the question the prompt
    assert third["prompt"] == [{"role": "user", "content": "Hours?"}]
    assert third["reference"] == "9 to 5." and third["must_not_include"] == ["24/7"]
    shipped = load_prompts([TICKETS])
    assert len(shipped.rows) == 42 and all(r["response_format"] for r in shipped.rows)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"question": "hi"}, "(record): no prompt: keys question (expected prompt or messages)"),
        ({"prompt": "hi", "must_include": [1]}, "must_include: wrong type array"),
        (
            {"prompt": "hi", "response_format": {"type": "text"}},
            "response_format: expected an object with type json_object or json_schema",
        ),
        (
            {"prompt": "hi", "response_format": {"type": "json_schema"}},
            "response_format.json_schema.schema: missing",
        ),
        (
            {"messages": [{"role": "system", "content": "x"}]},
            "messages: does not end with a user turn",
        ),
    ],
)
def test_bad_prompt_rows_are_located(tmp_path: Path, row: dict, message: str) -> None:
    from slmkit.data.prompts import load_prompts

    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, row])
    prompts = load_prompts([path])
    assert len(prompts.rows) == 1
    assert len(prompts.problems) == 1
    assert f"bad.jsonl:2: {message}" in str(prompts.problems[0])


# --- rewards -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"id": "K-1", "qty": 2}', 1.0),
        ('  {"id": "K-1", "qty": 2}\n', 1.0),
        ('{"id": "K-1"}', 0.5),  # JSON, but the schema wants qty
        ('{"id": "K-1", "qty": "two"}', 0.5),
        ("Sure! Here it is: {...}", 0.0),
        ('```json\n{"id": "K-1", "qty": 2}\n```', 0.25),  # JSON inside a fence: partial credit
        ('The ticket: {"id": "K-1"} as asked.', 0.25),
        ('<think>it is an order</think>{"id": "K-1", "qty": 2}', 1.0),  # reasoning left out
    ],
)
def test_json_schema_reward(answer: str, expected: float) -> None:
    from slmkit.train.rewards import completion_text, score

    row = {"response_format": json.dumps(FORMAT)}
    assert score("json_schema", completion_text(answer), row, settings()) == expected


def test_the_other_builtin_rewards() -> None:
    from slmkit.train.rewards import reward_functions, score

    grpo = settings(must_not_include=["competitor"], max_words=10)
    row = {"must_include": ["41 days", "refund"], "must_not_include": ["sorry"]}
    assert score("must_include", "A refund within 41 days.", row, grpo) == 1.0
    assert score("must_include", "A REFUND, soon.", row, grpo) == 0.5
    assert score("must_include", "anything", {}, grpo) == 0.0
    assert score("must_not_include", "fine", row, grpo) == 1.0
    assert score("must_not_include", "Sorry, no.", row, grpo) == 0.0
    assert score("must_not_include", "Try the Competitor.", row, grpo) == 0.0
    assert score("not_empty", "  ", row, grpo) == 0.0 and score("not_empty", "x", row, grpo) == 1.0
    assert score("no_refusal", "I'm sorry, I cannot do that", row, grpo) == 0.0
    assert score("no_repetition", "go on and on " * 10, row, grpo) == 0.0
    assert score("no_repetition", "A plain answer.", row, grpo) == 1.0
    assert [score("length", " ".join(["w"] * n), row, grpo) for n in (5, 10, 15, 20, 30)] == [
        1.0,
        1.0,
        0.5,
        0.0,
        0.0,
    ]
    # TRL calls each with keyword lists; conversational completions are message lists
    (function,) = reward_functions(settings(rewards=["must_include"]))
    completions = [[{"role": "assistant", "content": "41 days"}], [{"role": "assistant", "content": "no"}]]  # fmt: skip
    values = function(completions=completions, prompts=[[], []], must_include=[["41 days"], ["41 days"]])  # fmt: skip
    assert values == [1.0, 0.0] and function.__name__ == "must_include"


def test_a_recipe_names_its_own_reward(tmp_path: Path) -> None:
    from slmkit.errors import ConfigError
    from slmkit.train.rewards import reward_functions

    (tmp_path / "team_rewards.py").write_text(
        "def polite(completions, **kw):\n    return [float('please' in str(c)) for c in completions]\n"
        "def broken(completions, **kw):\n    return [1.0]\n"
    )
    (polite,) = reward_functions(settings(rewards=["team_rewards:polite"]), tmp_path)
    assert polite(completions=["please wait", "no"], prompts=["a", "b"]) == [1.0, 0.0]
    (broken,) = reward_functions(settings(rewards=["team_rewards:broken"]), tmp_path)
    with pytest.raises(ConfigError, match="returned list of 1 values for 2 completions"):
        broken(completions=["a", "b"], prompts=["a", "b"])
    with pytest.raises(ConfigError, match=r"grpo.rewards\[0\]: cannot import 'no_such_module'"):
        reward_functions(settings(rewards=["no_such_module:f"]), tmp_path)
    with pytest.raises(ConfigError, match="'team_rewards' has no function 'missing'"):
        reward_functions(settings(rewards=["team_rewards:missing"]), tmp_path)


# --- training ----------------------------------------------------------------------------------

BRIEF_REWARD = """
def brief(completions, completion_ids, **kwargs):
    return [1.0 - len(ids) / 32 for ids in completion_ids]
"""


def test_grpo_logs_each_reward_on_the_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "short.py").write_text(BRIEF_REWARD)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Say something {i}."} for i in range(4)])  # fmt: skip
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "run", prompts, max_steps=2, batch_size=2)
    recipe.update(
        method="grpo",
        grpo={
            "rewards": ["short:brief", "not_empty"],
            "num_generations": 4,
            "max_completion_len": 8,
        },
    )
    result = run_slm("train", str(write_recipe(tmp_path / "grpo.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [row for row in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "reward" in row]
    assert len(rows) == 2
    for row in rows:  # 8 tokens of a random model never end early: brief = 1 - 8/32
        assert row["rewards/short_brief/mean"] == pytest.approx(0.75)
        assert row["rewards/not_empty/mean"] == 1.0
        assert row["reward"] == pytest.approx(1.75)
    assert "4 prompts" in result.stderr.replace("\n", " ")
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_grpo_raises_the_reward_of_the_embedded_model(tmp_path: Path) -> None:
    # a reward the embedded model can earn within a few steps: answer in fewer tokens
    (tmp_path / "short.py").write_text(BRIEF_REWARD)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Say something {i}."} for i in range(4)])  # fmt: skip
    recipe = {
        "model": "default",
        "method": "grpo",
        "output_dir": str(tmp_path / "run"),
        "data": {"train": [str(prompts)]},
        "grpo": {"rewards": ["short:brief"], "num_generations": 4, "max_completion_len": 32},
        "train": {
            "lr": 1e-3,
            "max_steps": 8,
            "batch_size": 2,
            "warmup_ratio": 0.0,
            "report_to": [],
            "save_steps": 20,
        },
    }
    result = run_slm("train", str(write_recipe(tmp_path / "r.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [row for row in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "reward" in row]
    rewards = [row["reward"] for row in rows]
    lengths = [row["completions/mean_length"] for row in rows]
    assert len(rewards) == 8 and all(math.isfinite(r) for r in rewards)
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.2, rewards
    assert sum(lengths[-2:]) < sum(lengths[:2]), lengths


@pytest.mark.parametrize(
    ("grpo", "message"),
    [
        (
            {"rewards": ["valid_json"]},
            "grpo.rewards: 'valid_json' (entry 0) is not a built-in reward",
        ),
        (
            {"rewards": ["json_schema"], "reward_weights": [1, 2]},
            "reward_weights: 2 weights for 1 rewards",
        ),
        ({"rewards": ["nowhere:f"]}, "grpo.rewards[0]: cannot import 'nowhere'"),
        ({"num_generations": 1}, "grpo.num_generations"),
    ],
)
def test_bad_grpo_settings_are_one_line(
    tmp_path: Path, tiny_model_dir: Path, grpo: dict, message: str
) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "run", prompts)
    recipe.update(method="grpo", grpo=grpo)
    result = run_slm("train", str(write_recipe(tmp_path / "r.yaml", recipe)))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr.replace("\n", " "), result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists(), "refused before training"


# --- slm eval: json_valid -----------------------------------------------------------------------


def test_json_valid_is_scored_for_items_that_ask_for_json() -> None:
    from slmkit.evaluate import scoring
    from slmkit.evaluate.evalset import parse_item

    item = parse_item({"prompt": "q", "reference": "{}", "response_format": FORMAT}, "e.jsonl:1", 1)
    plain = parse_item({"prompt": "q", "reference": "x"}, "e.jsonl:2", 2)
    assert scoring.score_answer(item, '{"id": "K", "qty": 1}').json_valid == 1.0
    assert scoring.score_answer(item, '{"id": "K"}').json_valid == 0.0
    assert scoring.score_answer(plain, '{"id": "K"}').json_valid is None
    # without facts to check, JSON items make json_valid the main metric
    assert scoring.main_metric_for([item, plain], "fact_recall") == "json_valid"
    assert scoring.main_metric_for([plain], "fact_recall") == "rouge_l"


def test_a_bad_response_format_in_an_eval_set_is_located() -> None:
    from slmkit.errors import DataError
    from slmkit.evaluate.evalset import parse_item

    with pytest.raises(DataError, match="e.jsonl:3: response_format: expected an object with type"):
        parse_item({"prompt": "q", "reference": "x", "response_format": "json"}, "e.jsonl:3", 3)


def test_docs_rewards_table_is_current() -> None:
    from slmkit.train.config import rewards_reference_markdown

    text = (REPO / "docs" / "train.md").read_text()
    block = text.split("<!-- reference:rewards -->\n", 1)[1].split("\n<!-- /reference:rewards -->")[
        0
    ]
    assert block == rewards_reference_markdown(), "regenerate the rewards table in docs/train.md"


def test_grpo_with_validation_data_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}, {"prompt": "ho"}])
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "run", prompts)
    recipe.update(method="grpo")
    recipe["data"]["val_ratio"] = 0.5
    result = run_slm("train", str(write_recipe(tmp_path / "r.yaml", recipe)))
    assert result.returncode == 2 and "method grpo does not validate" in result.stderr
