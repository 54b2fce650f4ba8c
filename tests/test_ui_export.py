"""The board's Export tab: a run exported from the page shows the quant table with its
recommendation, the Modelfile and serve.sh, and downloadable files; a missing model folder shows
the CLI's one-line error; the levels offered start from ExportConfig's defaults."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from eval_helpers import write_adapter_run
from slmkit.export.config import ExportConfig
from slmkit.ui.export_view import export_argv
from ui_helpers import fill, needs_browser, open_tab, screenshot

RUN_S = 300_000  # ms: merge, convert, quantize and quant eval in an `slm export` child


def test_the_form_keeps_the_config_defaults_off_the_command_line(tmp_path: Path) -> None:
    argv = export_argv("runs/a", ExportConfig().quants, tmp_path / "out")
    assert argv == [
        "export",
        "runs/a",
        "--quant",
        ",".join(ExportConfig().quants),
        "-o",
        str(tmp_path / "out"),
    ]
    argv = export_argv("runs/a", ["q8_0"], tmp_path, max_prompts=2, skip_eval=True)
    assert argv[-3:] == ["--max-prompts", "2", "--skip-eval"]


@needs_browser
@pytest.mark.browser
def test_an_export_shows_the_quant_table(
    board,
    page,
    board_model: Path,
) -> None:
    write_adapter_run(board_model, board.runs_dir / "export-me", seed=2)
    open_tab(page, board, "Export")
    checked = page.locator("#export-quants input:checked")
    checked.first.wait_for()
    assert checked.count() == len(ExportConfig().quants)  # the defaults, from the config
    page.locator("#export-source input").click()
    page.get_by_role("option", name=re.compile(r"^export-me ")).click()
    for level in ExportConfig().quants:
        if level != "q8_0":
            page.locator("#export-quants").get_by_label(level, exact=True).uncheck()
    page.get_by_text("quant eval settings").click()
    fill(page.locator("#export-max-prompts input"), "1")
    page.locator("#export-start").click()
    page.locator("#export-status").get_by_text("export finished").wait_for(timeout=RUN_S)

    table = page.locator("#export-quant-table")
    for cell in ("KLD", "top-1", "PPL ratio", "f16", "reference", "q8_0", "recommended"):
        expect(table).to_contain_text(cell)
    assert "Recommended:" in page.locator("#export-recommendation").inner_text()
    assert "FROM ./export-me-q8_0.gguf" in page.locator("#export-modelfile").inner_text()
    assert "llama-server -m export-me-q8_0.gguf" in page.locator("#export-serve").inner_text()
    link = page.locator("#export-files a", has_text="export.json")
    manifest = httpx.get(board.url + link.get_attribute("href"), timeout=30).json()
    assert manifest["recommended"] == "export-me-q8_0.gguf"
    assert manifest["source"] == str(board.runs_dir / "export-me")
    screenshot(page, "export")


@needs_browser
@pytest.mark.browser
def test_a_missing_model_folder_shows_the_cli_error_line(
    board,
    page,
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-such-model"
    open_tab(page, board, "Export")
    source = page.locator("#export-source input")
    status = page.locator("#export-status")
    wanted = status.get_by_text(re.compile(r"^error: .*no-such-model"))
    # the page's load event refreshes the source's choices, and on a busy machine its answer can
    # arrive after the typing and clear it: type again until the error names what was typed
    for _ in range(3):
        source.fill(str(missing))
        source.press("Enter")
        page.locator("#export-start").click()
        try:
            wanted.wait_for(timeout=RUN_S / 3)
            break
        except PlaywrightTimeout:
            continue
    else:
        raise AssertionError(status.inner_text())
    assert "Traceback" not in status.inner_text()
