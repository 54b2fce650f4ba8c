"""The board's Data tab: the same checks as `slm data validate` (format per file, problems at
file:line, token stats, a rendered sample with its no-loss part greyed) in the page."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import REPO
from slmkit.errors import DataError
from slmkit.ui.context import Board
from slmkit.ui.data_view import data_paths, problem_rows, report_stats, sample_html
from slmkit.ui.tabs.data import OWN_TEMPLATE, check_data
from train_helpers import write_jsonl
from ui_helpers import needs_browser, open_tab, screenshot

LLAMAFACTORY = REPO / "tests" / "data" / "llamafactory_demo"
BAD = [
    {"instruction": "How long is the warranty?", "output": "Two years."},
    {"instruction": "Return policy?", "input": ""},  # line 2: no output
]


def test_problems_stats_and_masked_sample_come_from_validate_data(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", BAD)
    local = Board(tmp_path / "runs", tmp_path / "board")
    report, tokenizer = check_data(
        local, f"{bad}\n{LLAMAFACTORY}", None, str(tiny_model_dir), "auto", OWN_TEMPLATE, 64, False
    )
    assert ["error", f"{bad}:2", "output"] == problem_rows(report.problems)[0][:3]
    assert {f.format for f in report.files} == {"alpaca", "sharegpt", "preference"}
    stats = report_stats(report)
    assert stats.records == len(report.loaded.records) and 0 < stats.trainable_share < 1
    assert stats.over_cutoff > 0  # the demo's long tool-call samples exceed 64 tokens
    shown = sample_html(report, 0, tokenizer)
    assert 'class="slm-masked"' in shown and 'class="slm-trained"' in shown
    rendered = shown.split("<pre")[1]  # the answer carries the loss, the prompt does not
    assert '<span class="slm-trained">Two years.' in rendered
    assert '<span class="slm-masked">&lt;|im_start|&gt;system' in rendered


def test_uploaded_dataset_info_is_read_with_the_files_uploaded_beside_it(tmp_path: Path) -> None:
    upload = tmp_path / "gradio" / "abc123"
    upload.mkdir(parents=True)
    files = []
    for name in ("dataset_info.json", "identity.json", "alpaca_demo.json"):
        (upload / name).write_bytes((LLAMAFACTORY / name).read_bytes())
        files.append(str(upload / name))
    paths = data_paths("", files, tmp_path / "uploads")
    assert paths == [tmp_path / "uploads" / "abc123" / "dataset_info.json"]
    with pytest.raises(DataError, match="no data: upload files or type a file or folder path"):
        data_paths(" \n", None, tmp_path / "uploads")


@needs_browser
@pytest.mark.browser
def test_a_bad_data_file_shows_its_file_line_problem_in_the_data_tab(
    board,
    page,
    tmp_path: Path,
    board_model: Path,
) -> None:
    bad = write_jsonl(board.place("data/bad.jsonl"), BAD)
    folder = board.place("data/llamafactory_demo")
    shutil.copytree(LLAMAFACTORY, folder, dirs_exist_ok=True)
    open_tab(page, board, "Data")
    page.locator("#data-paths").get_by_role("textbox").fill(f"{bad}\n{folder}")
    model = page.locator("#data-model").get_by_role("textbox")
    model.fill(str(tmp_path / "no-such-model"))
    page.locator("#data-check").click()
    status = page.locator("#data-status")
    status.get_by_text("error:").wait_for()
    line = status.locator(".slm-status").inner_text()
    assert line.startswith("error: ") and "no-such-model" in line and "\n" not in line

    model.fill(str(board_model))
    page.locator("#data-cutoff input").fill("128")  # the demo's tool-call samples are longer
    page.locator("#data-check").click()
    problems = page.locator("#data-problems")
    where = f"{bad.relative_to(board.folder)}:2"  # inside the board's working folder: relative
    problems.get_by_text(where, exact=True).locator("visible=true").first.wait_for()
    assert problems.get_by_text("missing (expected the answer").count() >= 1
    assert "error: validation failed" in status.inner_text()
    files = page.locator("#data-files")
    assert files.get_by_text("sharegpt", exact=True).count() >= 1
    stats = page.locator("#data-stats")
    stats.get_by_text("over cutoff_len 128").wait_for()
    assert "trainable share" in stats.inner_text()
    sample = page.locator("#data-sample")
    assert (
        sample.locator(".slm-masked").count() >= 1 and sample.locator(".slm-trained").count() >= 1
    )
    masked = sample.locator(".slm-masked").first.evaluate("e => getComputedStyle(e).color")
    assert masked == "rgb(156, 163, 175)"  # greyed: the board's CSS reached the rendered sample
    page.locator("#data-histogram img").first.wait_for()  # the matplotlib histogram
    screenshot(page, "data")
