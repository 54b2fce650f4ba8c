"""Learning from what users give: KTO on rated answers (thumbs up/down, unpaired), and ORPO and
SimPO on preference pairs without a reference model; their data and their bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import run_slm
from train_helpers import DEMO, loss_curve, read_jsonl, tiny_recipe, write_jsonl, write_recipe

STEPS = dict(max_steps=6, lr=5e-3, batch_size=8)  # one batch holds every row


def rated_rows(count: int = 8) -> list[dict]:
    """Thumbs from the demo's preference pairs: a chosen answer rated up, a rejected one down."""
    rows = []
    for index, pair in enumerate(read_jsonl(DEMO / "support_dpo.jsonl")[:count]):
        good = index % 2 == 0
        answer = pair["chosen"] if good else pair["rejected"]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": pair["prompt"]},
                    {"role": "assistant", "content": answer},
                ],
                "label": good,
            }
        )
    return rows


@pytest.fixture(scope="module")
def rated_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("rated") / "thumbs.jsonl", rated_rows())


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pairs")
    return write_jsonl(folder / "pairs.jsonl", read_jsonl(DEMO / "support_dpo.jsonl")[:8])


def train(folder: Path, model_dir: Path, data: Path, method: str, **dpo: float) -> Path:
    recipe = tiny_recipe(model_dir, folder / method, data, **STEPS)
    recipe.update(method=method, dpo=dpo)
    result = run_slm("train", str(write_recipe(folder / f"{method}.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / method


# --- data: rated answers ---------------------------------------------------------------------


def test_rated_answers_load_in_every_conversation_format(tmp_path: Path) -> None:
    from slmkit.data import load_records

    messages = write_jsonl(tmp_path / "m.jsonl", rated_rows(2))
    sharegpt = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {
                "conversations": [
                    {"from": "human", "value": "Open on Sunday?"},
                    {"from": "gpt", "value": "No."},
                ],
                "label": False,
            }
        ],
    )
    alpaca = write_jsonl(
        tmp_path / "a.jsonl", [{"instruction": "Open on Sunday?", "output": "No.", "label": True}]
    )
    loaded = load_records([messages, sharegpt, alpaca])
    assert not loaded.problems
    assert [(r.kind, r.label) for r in loaded.records] == [
        ("unpaired", True),
        ("unpaired", False),
        ("unpaired", False),
        ("unpaired", True),
    ]
    # the same conversation rated both ways is two records, not a duplicate
    up, down = rated_rows(1)[0], {**rated_rows(1)[0], "label": False}
    both = load_records([write_jsonl(tmp_path / "both.jsonl", [up, down])])
    assert len({r.key() for r in both.records}) == 2


def test_dataset_info_kto_tag_column(tmp_path: Path) -> None:
    from slmkit.data import load_records

    rows = [{**row, "thumb": row.pop("label")} for row in rated_rows(4)]
    write_jsonl(tmp_path / "thumbs.jsonl", rows)
    (tmp_path / "dataset_info.json").write_text(
        json.dumps(
            {
                "thumbs": {
                    "file_name": "thumbs.jsonl",
                    "formatting": "sharegpt",
                    "columns": {"messages": "messages", "kto_tag": "thumb"},
                    "tags": {
                        "role_tag": "role",
                        "content_tag": "content",
                        "user_tag": "user",
                        "assistant_tag": "assistant",
                    },
                }
            }
        )
    )
    loaded = load_records([tmp_path])
    assert not loaded.problems, loaded.problems
    assert [r.label for r in loaded.records] == [True, False, True, False]


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("yes", "label: wrong type string (expected true or false"),
        (1, "label: wrong type number (expected true or false"),
        (None, "label: wrong type null (expected true or false"),
    ],
)
def test_a_label_that_is_not_true_or_false_is_located(
    tmp_path: Path, label: object, message: str
) -> None:
    from slmkit.data import load_records

    rows = rated_rows(3)
    rows[1]["label"] = label
    loaded = load_records([write_jsonl(tmp_path / "bad.jsonl", rows)])
    assert len(loaded.errors) == 1
    assert str(loaded.errors[0]).endswith(f"bad.jsonl:2: {message}: was the last answer good?)")
    assert len(loaded.records) == 2


def test_desirable_weight_auto_balances_the_thumbs() -> None:
    from slmkit.recipe import Recipe
    from slmkit.train.kto import desirable_weight

    def weight(up: int, down: int, **dpo: object) -> float:
        recipe = Recipe(model="default", method="kto", data={"train": ["x.jsonl"]}, dpo=dpo)
        return desirable_weight(recipe, [{"label": True}] * up + [{"label": False}] * down)

    assert weight(6, 5) == 1.0  # 6/5 is inside the range already
    for up, down in ((2, 6), (6, 2), (5, 5), (3, 7), (6, 5)):
        ratio = up * weight(up, down) / down  # the KTO paper's range is [1, 4/3]
        assert 1.0 <= ratio <= 4 / 3, (up, down, ratio)
    assert weight(4, 0) == 1.0 and weight(0, 4) == 1.0 and weight(5, 5) == 1.0
    assert weight(2, 6, desirable_weight=0.5) == 0.5
    assert weight(2, 6, undesirable_weight=2.0) == pytest.approx(2 * weight(2, 6), abs=1e-3)


# --- the losses --------------------------------------------------------------------------------


def test_orpo_and_simpo_losses_match_their_papers() -> None:
    import torch

    from slmkit.train.reference_free import pair_losses

    chosen = torch.tensor([-0.2, -1.5, -3.0, -1e-4], dtype=torch.float64)
    rejected = torch.tensor([-0.9, -0.5, -3.0, -8.0], dtype=torch.float64)
    loss, extra = pair_losses("orpo", chosen, rejected, beta=0.1, gamma=0.0)
    p_c, p_r = chosen.exp(), rejected.exp()
    log_odds = torch.log(p_c / (1 - p_c)) - torch.log(p_r / (1 - p_r))
    torch.testing.assert_close(extra["log_odds_ratio"], log_odds)
    torch.testing.assert_close(loss, -0.1 * torch.nn.functional.logsigmoid(log_odds))
    loss, _ = pair_losses("simpo", chosen, rejected, beta=2.0, gamma=1.0)
    expected = torch.log1p(torch.exp(-(2.0 * (chosen - rejected) - 1.0)))
    torch.testing.assert_close(loss, expected)
    assert all(math.isfinite(v) for v in loss.tolist())
    with pytest.raises(ValueError, match="not a reference-free method"):
        pair_losses("dpo", chosen, rejected, 0.1, 0.0)


# --- training on the tiny model ----------------------------------------------------------------


def test_kto_raises_good_answers_and_lowers_bad_ones(
    tmp_path: Path, tiny_model_dir: Path, rated_file: Path
) -> None:
    run = train(tmp_path, tiny_model_dir, rated_file, "kto")
    chosen, rejected = loss_curve(run, "rewards/chosen"), loss_curve(run, "rewards/rejected")
    assert len(chosen) == 6 and abs(chosen[0]) < 1e-3, "policy == reference at the first step"
    assert chosen[-1] > 0.1 and rejected[-1] < -0.1, (chosen, rejected)
    losses = loss_curve(run)
    assert losses[-1] < losses[0]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    summary = json.loads((run / "diagnosis.json").read_text())["run"]["data_stats"]
    assert (summary["thumbs_up"], summary["thumbs_down"]) == (4, 4)


@pytest.mark.parametrize("method", ["orpo", "simpo"])
def test_reference_free_methods_separate_the_pair(
    tmp_path: Path, tiny_model_dir: Path, pairs_file: Path, method: str
) -> None:
    run = train(tmp_path, tiny_model_dir, pairs_file, method)
    margins = loss_curve(run, "rewards/margins")
    assert len(margins) == 6 and margins[-1] > margins[0] + 1e-3, margins
    nll = loss_curve(run, "nll_loss")
    if method == "orpo":  # ORPO is also an SFT loss on the chosen answers
        assert nll[-1] < nll[0] - 0.1, nll
        assert "log_odds_ratio" in read_jsonl(run / "metrics.jsonl")[1]
    recipe = (run / "recipe.yaml").read_text()
    assert f"method: {method}" in recipe


def test_kto_continues_an_sft_run_against_it(
    tmp_path: Path, tiny_model_dir: Path, rated_file: Path
) -> None:
    sft_rows = read_jsonl(DEMO / "support_sft.jsonl")[:16]
    sft = tiny_recipe(tiny_model_dir, tmp_path / "sft", write_jsonl(tmp_path / "s.jsonl", sft_rows), max_steps=2)  # fmt: skip
    assert run_slm("train", str(write_recipe(tmp_path / "sft.yaml", sft))).returncode == 0
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "kto", rated_file, max_steps=2)
    recipe.update(method="kto", dpo={"from_run": str(tmp_path / "sft")})
    result = run_slm("train", str(write_recipe(tmp_path / "kto.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "kto" / "manifest.json").read_text())
    assert manifest["init_adapter"] == str(tmp_path / "sft" / "adapter")
    assert "8 rated answers (4 up, 4 down)" in result.stderr.replace("\n", " ")


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "data", "changes", "message"),
    [
        (
            "kto",
            "pairs",
            {},
            "pairs.jsonl:1: a 'preference' record, but method 'kto' needs 'unpaired'",
        ),
        (
            "orpo",
            "rated",
            {},
            "thumbs.jsonl:1: a 'unpaired' record, but method 'orpo' needs 'preference'",
        ),
        ("sft", "rated", {}, "use method: kto for this data"),
        (
            "kto",
            "rated",
            {"train": {"batch_size": 1}},
            "train.batch_size: method kto needs at least 2",
        ),
        (
            "orpo",
            "pairs",
            {"dpo": {"ftx": 1.0}},
            "dpo.ftx: used with method dpo or simpo, not orpo",
        ),
        ("simpo", "pairs", {"dpo": {"beta": 0}}, "dpo.beta"),
        ("kto", "rated", {"dpo": {"desirable_weight": "many"}}, "dpo.desirable_weight"),
    ],
)
def test_bad_method_input_is_one_clear_line(
    tmp_path: Path,
    tiny_model_dir: Path,
    rated_file: Path,
    pairs_file: Path,
    method: str,
    data: str,
    changes: dict,
    message: str,
) -> None:
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "run", rated_file if data == "rated" else pairs_file)  # fmt: skip
    recipe["method"] = method
    for section, values in changes.items():
        recipe.setdefault(section, {}).update(values)
    result = run_slm("train", str(write_recipe(tmp_path / "r.yaml", recipe)))
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr.replace("\n", " "), result.stderr
    assert "Traceback" not in result.stderr


# --- the embedded model ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", ["kto", "orpo", "simpo"])
def test_each_method_trains_the_embedded_model(
    tmp_path: Path, rated_file: Path, pairs_file: Path, method: str
) -> None:
    data = rated_file if method == "kto" else pairs_file
    recipe = {
        "model": "default",
        "method": method,
        "output_dir": str(tmp_path / "run"),
        "data": {"train": [str(data)], "cutoff_len": 96},
        "train": {"max_steps": 2, "batch_size": 4, "report_to": [], "save_steps": 2},
    }
    result = run_slm("train", str(write_recipe(tmp_path / "r.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"schedule (auto): lr 5e-05 for {method.upper()} on a lora adapter" in result.stderr
    rows = [row for row in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in row]
    assert len(rows) == 2 and all(math.isfinite(row["loss"]) for row in rows)
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_orpo_log_odds_stay_finite_for_a_certain_answer() -> None:
    import torch

    from slmkit.train.reference_free import pair_losses

    chosen = torch.tensor([0.0, -1e-9], requires_grad=True)  # float32 rounds a sure answer to 0
    rejected = torch.tensor([-2.0, -2.0])
    loss, extra = pair_losses("orpo", chosen, rejected, beta=0.1, gamma=0.0)
    loss.sum().backward()
    assert torch.isfinite(extra["log_odds_ratio"]).all() and torch.isfinite(chosen.grad).all()
