"""The board's Train tab: a recipe form whose defaults are the recipe models' own, the YAML it
writes, and a `slm train` child started from the page whose loss curve grows live, that finishes,
and that the Runs tab lists after a reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmkit.errors import ConfigError
from slmkit.recipe import Recipe, load_recipe
from slmkit.train.config import LoraSection, TrainSection
from slmkit.ui import train_form
from train_helpers import write_jsonl
from ui_helpers import needs_browser, open_tab, screenshot

ROWS = [
    {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
    for i in range(12)
]


def settled_form(page, board) -> None:  # type: ignore[no-untyped-def]
    """Wait until the page load has put the latest training's recipe into the form, when the
    board has one (a later fill would otherwise be overwritten by it)."""
    runs = board.runs_dir
    names = {p.name for p in runs.iterdir()} if runs.is_dir() else set()
    if not names:
        return
    box = page.locator("#train-run-name").get_by_role("textbox")
    _poll(lambda: box.input_value() in names, timeout_s=60)


def _poll(check, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    """Whether `check()` came true within `timeout_s`, asked every 0.2 s."""
    import time

    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def fill(page, elem_id: str, value: str) -> None:  # type: ignore[no-untyped-def]
    """Type into a form textbox and leave it (the YAML preview updates on change)."""
    box = page.locator(f"#{elem_id}").get_by_role("textbox").first
    box.fill(value)
    box.press("Tab")


def number(page, elem_id: str, value: str) -> None:  # type: ignore[no-untyped-def]
    box = page.locator(f"#{elem_id} input")
    box.fill(value)
    box.press("Tab")


def _form(**changes: object) -> list[object]:
    values = {key: train_form.default_value(key) for key in train_form.FORM_KEYS}
    values.update({key.replace("__", "."): value for key, value in changes.items()})
    return [values[key] for key in train_form.FORM_KEYS]


def test_form_defaults_are_the_recipe_models_defaults() -> None:
    assert train_form.default_value("train.lr") == TrainSection.model_fields["lr"].default
    assert train_form.default_value("lora.r") == LoraSection.model_fields["r"].default
    assert train_form.default_value("model") == Recipe.model_fields["model"].default
    assert train_form.choices("finetuning") == ["lora", "qlora", "full", "freeze"]
    assert train_form.kind("data.packing") == "bool" and train_form.kind("train.max_steps") == "int"
    assert (
        train_form.kind("train.lr") == "auto-number"
        and train_form.default_value("train.lr") == "auto"
    )
    assert train_form.choices("data.template")[:2] == ["", "chatml"]  # "": the model's own
    assert "cosine" in train_form.choices("train.scheduler")
    assert train_form.default_value("data.template") == "" and train_form.default_value("data.max_samples") == ""  # fmt: skip
    assert [train_form.from_form("data.max_samples", v) for v in ("", " 50", "many")] == [None, 50, "many"]  # fmt: skip
    assert [train_form.from_form("data.template", v) for v in ("", "chatml")] == [None, "chatml"]
    assert [train_form.from_form("train.lr", v) for v in ("", " auto", "5e-4", 0.002, "fast")] == [
        "auto",
        "auto",
        5e-4,
        0.002,
        "fast",
    ]


def test_form_yaml_round_trips_through_load_recipe(tmp_path: Path) -> None:
    data_file = write_jsonl(tmp_path / "train.jsonl", ROWS)
    values = _form(
        data__train=str(data_file),
        train__max_steps=6.0,
        lora__target_modules="q_proj, v_proj",
        data__max_samples="20",
        train__scheduler="linear",
        train__max_grad_norm=0.5,
    )
    data = train_form.recipe_data(values, "r1", tmp_path / "runs", {"train": {"weight_decay": 0.1}})
    path = tmp_path / "r1.yaml"
    path.write_text(train_form.recipe_yaml(data, path))
    recipe = load_recipe(path)
    assert recipe.output_dir == str(tmp_path / "runs" / "r1")
    assert recipe.train.max_steps == 6 and recipe.train.weight_decay == 0.1  # base kept
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert (recipe.data.max_samples, recipe.data.template) == (20, None)
    assert (recipe.train.scheduler, recipe.train.max_grad_norm) == ("linear", 0.5)
    loaded, name, _ = train_form.load_form(path)
    assert name == "r1" and loaded == values[:1] + loaded[1:] and loaded[3] == str(data_file)
    assert loaded[train_form.FORM_KEYS.index("data.max_samples")] == 20


def test_the_run_name_box_decides_the_folder_over_a_loaded_recipes(tmp_path: Path) -> None:
    """A recipe loaded into the form (a file, or the latest training's on page load) carries its
    own output_dir; Start must write where the run name box says, not into the loaded run."""
    earlier = {"output_dir": str(tmp_path / "runs" / "first"), "train": {"weight_decay": 0.1}}
    data = train_form.recipe_data(
        _form(data__train="x.jsonl"), "second", tmp_path / "runs", earlier
    )
    assert data["output_dir"] == str(tmp_path / "runs" / "second")
    assert data["train"]["weight_decay"] == 0.1


def test_a_bad_form_value_is_one_line_naming_its_key(tmp_path: Path) -> None:
    data = train_form.recipe_data(_form(data__train="x.jsonl", train__lr=0), "r", tmp_path, None)
    with pytest.raises(ConfigError) as caught:
        train_form.validate_recipe(data)
    assert str(caught.value) == "train.lr: expected `auto` or a number > 0 and <= 1, got 0.0"
    with pytest.raises(ConfigError, match="run name '../up': give a folder name"):
        train_form.recipe_data(_form(), "../up", tmp_path, None)


def test_progress_reads_step_rate_and_eta_from_metrics() -> None:
    rows = [
        {"step": 1, "time": 100.0, "loss": 2.0, "train_tokens_per_second": 50.0},
        {"step": 3, "time": 104.0, "loss": 1.5, "train_tokens_per_second": 60.0},
        {"step": 3, "time": 104.5, "eval_loss": 1.7},
    ]
    line = train_form.progress(rows, 10, running=True).line()
    assert line == "step 3/10 · loss 1.5000 · val loss 1.7000 · 60 tokens/s · ETA 14s"
    assert train_form.total_steps(None, "sft run: 4/40 (10%), 15s, eta 5s") == 40


@needs_browser
@pytest.mark.browser
def test_a_training_started_from_the_form_draws_its_curve_and_shows_in_runs(
    board,
    page,
    board_model: Path,
) -> None:
    data_file = write_jsonl(board.place("data/train.jsonl"), ROWS)
    open_tab(page, board, "Train")
    page.locator("#train-yaml").get_by_text("output_dir").first.wait_for()
    settled_form(page, board)

    fill(page, "train-run-name", "form-run")
    fill(page, "train-model", str(board_model))
    fill(page, "train-data-train", str(data_file))
    for elem_id, value in (
        ("train-train-max-steps", "4"),
        ("train-data-val-ratio", "0.2"),
        ("train-data-cutoff-len", "128"),
        ("train-train-batch-size", "4"),
    ):
        number(page, elem_id, value)
    fill(page, "train-train-lr", "0")
    status = page.locator("#train-status")
    page.locator("#train-start").click()
    error = "error: train.lr: expected `auto` or a number > 0 and <= 1, got 0.0"
    status.get_by_text(error).wait_for()
    line = status.locator(".slm-status").inner_text()
    assert line == error

    fill(page, "train-train-lr", "0.005")
    page.locator("#train-yaml").get_by_text("lr: 0.005").first.wait_for()
    page.locator("#train-start").click()
    status.get_by_text("started form-run").wait_for()
    assert "memory to train" in status.inner_text()
    # the curve is drawn while training runs (attached: a line whose points share one y value
    # has no height, and Playwright calls a zero-height element hidden)
    page.locator("#train-plot .mark-line path").first.wait_for(state="attached", timeout=180_000)
    page.locator("#train-live").get_by_text("train finished").wait_for(timeout=240_000)
    page.locator("#train-progress").get_by_text("step 4/4").wait_for()
    page.locator("#train-diagnosis").get_by_text("advice", exact=False).or_(
        page.locator("#train-diagnosis li")
    ).first.wait_for()
    assert (board.runs_dir / "form-run" / "adapter").is_dir()
    recipe = board.home / "board" / "recipes" / "form-run.yaml"
    assert load_recipe(recipe).data.train == [str(data_file)]
    final = page.locator("#train-plot .mark-line path").first
    final.wait_for(state="attached")  # still drawn after the last rows
    assert (final.get_attribute("d") or "").count("L") >= 3  # 4 steps: 4 points, 3 segments
    screenshot(page, "train")

    page.reload()  # the Runs tab lists it; the Train tab re-attaches to it
    page.get_by_role("tab", name="Runs", exact=True).click()
    page.locator("#runs-table").get_by_text("form-run", exact=True).locator(
        "visible=true"
    ).first.wait_for()
    page.get_by_role("tab", name="Train", exact=True).click()
    page.locator("#train-live").get_by_text("form-run: train finished").wait_for()
    assert page.locator("#train-run-name").get_by_role("textbox").input_value() == "form-run"


def _wait_for(check, what: str, timeout_s: float = 180) -> None:  # type: ignore[no-untyped-def]
    assert _poll(check, timeout_s), f"gave up waiting for {what}"


@needs_browser
@pytest.mark.browser
def test_stop_ends_a_training_and_resume_continues_from_its_last_checkpoint(
    board, page, board_model: Path
) -> None:
    import yaml

    from slmkit.train import runfolder

    run = board.runs_dir / "stop-run"
    data_file = write_jsonl(board.place("data/stop.jsonl"), ROWS)
    recipe_file = board.place("incoming/stop-run.yaml")
    recipe_file.write_text(
        yaml.safe_dump(
            {
                "model": str(board_model),
                "output_dir": str(run),
                "data": {"train": [str(data_file)], "cutoff_len": 64, "val_ratio": 0.0},
                # far more steps than the test waits for: only Stop ends it
                "train": {
                    "max_steps": 5000,
                    "batch_size": 2,
                    "lr": 0.005,
                    "save_steps": 3,
                    "save_total_limit": 2,
                    "logging_steps": 1,
                    "report_to": [],
                },
            }
        )
    )
    open_tab(page, board, "Train")
    page.locator("#train-yaml").get_by_text("output_dir").first.wait_for()
    settled_form(page, board)
    with page.expect_file_chooser() as chooser:
        page.locator("#train-load").click()
    chooser.value.set_files(str(recipe_file))
    status = page.locator("#train-status")
    status.get_by_text("loaded stop-run.yaml").wait_for()
    assert page.locator("#train-run-name").get_by_role("textbox").input_value() == "stop-run"

    page.locator("#train-start").click()
    status.get_by_text("started stop-run").wait_for()
    _wait_for(lambda: runfolder.last_checkpoint(run) is not None, "the first checkpoint")
    page.locator("#train-stop").click()
    status.get_by_text("stopping stop-run").wait_for()
    page.locator("#train-live").get_by_text("stop-run: train stopped").wait_for(timeout=60_000)
    checkpoint = runfolder.last_checkpoint(run)  # what Resume continues from
    assert checkpoint is not None
    last = int(checkpoint.name.split("-")[1])
    steps = [row["step"] for row in runfolder.read_metrics(run) if "loss" in row]
    assert steps and max(steps) < 5000 and not (run / "adapter").exists()  # ended, not finished

    page.locator("#train-resume").click()
    status.get_by_text("resumed stop-run").wait_for()

    def moved_on() -> bool:
        return any(r["step"] > last + 1 for r in runfolder.read_metrics(run) if "loss" in r)

    _wait_for(moved_on, "steps after the checkpoint")
    log = page.locator("#train-log textarea")
    said = "resumingfrom" + str(checkpoint)  # compared without the line wraps
    _wait_for(lambda: said in "".join(log.input_value().split()), "the resume line in the log")
    page.locator("#train-stop").click()
    page.locator("#train-live").get_by_text("stop-run: train stopped").wait_for(timeout=60_000)
    steps = [row["step"] for row in runfolder.read_metrics(run) if "loss" in row]
    # the steps logged after the checkpoint by the stopped process were dropped on resume:
    # every step appears once, and the resumed process went on from checkpoint + 1
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > last + 1, (last, steps)
