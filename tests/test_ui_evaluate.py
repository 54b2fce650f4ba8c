"""The board's Evaluate tab: two runs evaluated from the page show the summary with CIs, the
per-tag table, the answers side by side and the report to download; a missing eval set shows the
CLI's one-line error; a reloaded page finds the evaluation again."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from eval_helpers import FACT_ROWS, write_adapter_run, write_jsonl
from slmkit.errors import ConfigError
from slmkit.ui.eval_view import eval_argv
from ui_helpers import fill, needs_browser, open_tab, screenshot

RUN_S = 180_000  # ms: an `slm eval` child on a busy 2-core machine


def test_the_form_is_checked_by_the_cli_parsers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected NAME=REF"):
        eval_argv([], "=runs/x", "eval.jsonl", tmp_path)
    with pytest.raises(ConfigError, match="unknown metric 'facts'"):
        eval_argv(["base=default"], "", "eval.jsonl", tmp_path, min_gain="facts=0.3")
    argv = eval_argv(["a=/m/a", "b=/m/b"], "", "e.jsonl", tmp_path, max_tokens=6, similarity=False)
    assert argv[:3] == ["eval", "--models", "a=/m/a,b=/m/b"]
    assert argv[argv.index("--data") + 1] == str(Path("e.jsonl").resolve())
    assert argv[argv.index("--max-tokens") :][:2] == ["--max-tokens", "6"]
    assert "--no-similarity" in argv and Path(argv[argv.index("-o") + 1]).parent == tmp_path


def _pick_models(page, names: list[str]) -> None:
    box = page.locator("#eval-models")
    box.get_by_role("button", name=re.compile("remove", re.I)).first.click()  # the default base
    for name in names:
        box.locator("input").click()
        page.get_by_role("option", name=re.compile(rf"run: {name} ")).click()
    page.keyboard.press("Escape")


@needs_browser
@pytest.mark.browser
def test_an_evaluation_of_two_models_shows_the_summary_table(
    board,
    page,
    board_model: Path,
) -> None:
    write_adapter_run(board_model, board.runs_dir / "eval-a", seed=0)
    write_adapter_run(board_model, board.runs_dir / "eval-b", seed=1)
    data = write_jsonl(board.place("data/eval.jsonl"), FACT_ROWS)

    open_tab(page, board, "Evaluate")
    _pick_models(page, ["eval-a", "eval-b"])
    page.locator("#eval-data textarea").fill(str(data))
    page.get_by_text("settings and criteria").click()
    fill(page.locator("#eval-max-tokens input"), "6")
    page.locator("#eval-similarity input").uncheck()
    page.locator("#eval-start").click()
    status = page.locator("#eval-status")
    status.get_by_text("eval finished").wait_for(timeout=RUN_S)

    summary = page.locator("#eval-summary")
    summary.get_by_text("fact_recall (95% CI)").first.wait_for()
    for name in ("eval-a", "eval-b"):
        assert summary.get_by_text(name, exact=True).count() >= 1
    assert summary.get_by_text(re.compile(r"Δ vs eval-a")).count() >= 1
    assert page.locator("#eval-tags").get_by_text("returns", exact=True).count() >= 1
    assert page.locator("#eval-answers").get_by_text("41 days", exact=True).count() >= 1
    link = page.locator("#eval-files a", has_text="report.html")
    response = httpx.get(board.url + link.get_attribute("href"), timeout=30)
    assert response.status_code == 200 and "Evaluation report" in response.text
    screenshot(page, "evaluate")

    page.reload()  # a reloaded page shows the newest evaluation again
    page.get_by_role("tab", name="Evaluate", exact=True).click()
    page.locator("#eval-summary").get_by_text("eval-b", exact=True).first.wait_for()


@needs_browser
@pytest.mark.browser
def test_a_missing_eval_set_shows_the_cli_error_line(board, page, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-eval.jsonl"
    open_tab(page, board, "Evaluate")
    page.locator("#eval-data textarea").fill(str(missing))
    page.locator("#eval-start").click()
    status = page.locator("#eval-status")
    status.get_by_text(f"error: {missing}: eval set not found").wait_for(timeout=RUN_S)
    assert "Traceback" not in status.inner_text()
