"""A reward model (`method: reward`): trained on preference pairs, it scores chosen answers above
rejected ones, judges `slm eval --judge reward:RUN`, rewards GRPO, and is refused where a model
must write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_slm
from train_helpers import DEMO, loss_curve, read_jsonl, tiny_recipe, write_jsonl, write_recipe


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return read_jsonl(DEMO / "support_dpo.jsonl")[:8]


@pytest.fixture(scope="module")
def reward_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, pairs: list[dict]
) -> Path:
    folder = tmp_path_factory.mktemp("reward")
    data = write_jsonl(folder / "pairs.jsonl", pairs)
    recipe = tiny_recipe(tiny_model_dir, folder / "rm", data, max_steps=8, lr=5e-3, batch_size=8)
    recipe["method"] = "reward"
    result = run_slm("train", str(write_recipe(folder / "rm.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "rm"


def test_the_reward_model_learns_to_rank_the_pairs(reward_run: Path, pairs: list[dict]) -> None:
    accuracy, margin = loss_curve(reward_run, "accuracy"), loss_curve(reward_run, "margin")
    assert len(margin) == 8 and margin[-1] > margin[0] + 0.5 and accuracy[-1] == 1.0
    manifest = json.loads((reward_run / "manifest.json").read_text())
    assert manifest["method"] == "reward"
    config = json.loads((reward_run / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
    # loaded back on its own, it scores every chosen answer above its rejected one
    from slmkit.models.reward import RewardModel

    model = RewardModel.load(f"reward:{reward_run}")
    asked = [[{"role": "user", "content": p["prompt"]}] for p in pairs]
    chosen = model.score(asked, [p["chosen"] for p in pairs])
    rejected = model.score(asked, [p["rejected"] for p in pairs])
    assert all(c > r for c, r in zip(chosen, rejected, strict=True)), (chosen, rejected)


def test_eval_judges_with_the_reward_model(
    tmp_path: Path, reward_run: Path, pairs: list[dict], tiny_model_dir: Path, slm
) -> None:
    # two "models" whose answers are the pairs' chosen and rejected ones: an eval set's
    # references stand in, answered from the generation cache of a first run
    items = [{"prompt": p["prompt"], "reference": p["chosen"]} for p in pairs[:4]]
    data = write_jsonl(tmp_path / "eval.jsonl", items)
    from slmkit.evaluate.evalset import load_eval_set
    from slmkit.evaluate.judge import RewardJudge

    judge = RewardJudge(f"reward:{reward_run}")
    loaded = load_eval_set(data)
    wins = judge.pairwise_scores(loaded, [p["rejected"] for p in pairs[:4]], [p["chosen"] for p in pairs[:4]])  # fmt: skip
    assert wins == [1.0, 1.0, 1.0, 1.0]
    same = judge.pairwise_scores(loaded, [p["chosen"] for p in pairs[:4]], [p["chosen"] for p in pairs[:4]])  # fmt: skip
    assert same == [0.5] * 4
    # through the CLI: the same model twice gives the same answers, every question a tie
    result = slm("eval", "-m", f"a={tiny_model_dir},b={tiny_model_dir}", "-d", str(data), "--judge", f"reward:{reward_run}", "--max-tokens", "4", "--no-similarity", "-o", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [m["metrics"]["judge_win_rate"] for m in report["models"]] == [0.5, 0.5]
    bad = slm("eval", "-m", "a=default,b=default", "-d", str(data), "--judge", "judge-please")
    assert bad.returncode == 2 and "--judge: 'judge-please' is not reward:RUN" in bad.stderr


def test_a_reward_model_is_refused_where_a_model_must_write(
    tmp_path: Path, reward_run: Path, slm
) -> None:
    data = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "hi", "reference": "hello"}])
    for args in (
        ("eval", "-m", f"rm={reward_run}", "-d", str(data), "-o", str(tmp_path / "out")),
        ("export", str(reward_run), "-o", str(tmp_path / "exp")),
    ):
        result = slm(*args)
        assert result.returncode == 2, result.stderr
        assert "is a reward model: it scores answers, it does not write them" in result.stderr
        assert "Traceback" not in result.stderr


def test_grpo_takes_the_reward_model_as_a_reward(reward_run: Path) -> None:
    from slmkit.train.config import GrpoSection
    from slmkit.train.rewards import reward_functions

    (function,) = reward_functions(GrpoSection(rewards=[f"reward:{reward_run}"]))
    pair = read_jsonl(DEMO / "support_dpo.jsonl")[0]
    prompt = [{"role": "user", "content": pair["prompt"]}]
    values = function(
        prompts=[prompt, prompt],
        completions=[
            [{"role": "assistant", "content": pair["chosen"]}],
            [{"role": "assistant", "content": pair["rejected"]}],
        ],
    )
    assert values[0] > values[1]


def test_reward_recipes_that_cannot_work_are_one_line(
    tmp_path: Path, tiny_model_dir: Path, pairs: list[dict]
) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "rm", data)
    recipe.update(method="reward", dpo={"from_run": str(tmp_path)})
    result = run_slm("train", str(write_recipe(tmp_path / "r.yaml", recipe)))
    assert (
        result.returncode == 2 and "method: reward starts from a pretrained base" in result.stderr
    )
    sft = tiny_recipe(tiny_model_dir, tmp_path / "rm2", write_jsonl(tmp_path / "s.jsonl", read_jsonl(DEMO / "support_sft.jsonl")[:4]))  # fmt: skip
    sft["method"] = "reward"
    result = run_slm("train", str(write_recipe(tmp_path / "r2.yaml", sft)))
    assert result.returncode == 2 and "method 'reward' needs 'preference' records" in result.stderr
