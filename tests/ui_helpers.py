"""Browser-test harness for the board: one real `slm ui` process per test session (its own
SLM_HOME and runs folder), headless Debian Chromium driven by Playwright, and helpers to open a
tab and take the screenshots docs/ui.md shows (written when SLM_UI_SHOTS names a folder).

Import the fixtures into a test module: `from ui_helpers import board, browser, page  # noqa: F401`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_helpers import ON_CI
from slmkit.child_process import free_port, log_tail, terminate

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
START_TIMEOUT_S = 120.0
UI_TIMEOUT_MS = 60_000


def chromium_path() -> str | None:
    return os.environ.get("SLM_CHROMIUM") or shutil.which("chromium")


def _browser_ready() -> bool:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False
    return chromium_path() is not None


# Like the serving tests: skipped on a partial local set-up, a failure under CI=true.
needs_browser = pytest.mark.skipif(
    not _browser_ready() and not ON_CI, reason="playwright or Debian chromium not installed"
)


@dataclass
class BoardProcess:
    """A running `slm ui` on a free loopback port."""

    url: str
    runs_dir: Path
    home: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self) -> str:
        return log_tail(self.log, lines=20)


def start_board(root: Path, extra_args: list[str] | None = None) -> BoardProcess:
    runs, home = root / "runs", root / "home"
    runs.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / "board.log"
    env = {**os.environ, "SLM_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "slmkit.cli", "ui", "--port", str(port), "--runs", str(runs)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd + (extra_args or []), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root
        )
    board = BoardProcess(f"http://127.0.0.1:{port}", runs, home, proc, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"slm ui exited with {proc.returncode}: {board.log_tail()}")
        try:
            if httpx.get(board.url, timeout=2).status_code == 200:
                return board
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    terminate(proc)
    raise RuntimeError(f"slm ui did not answer in {START_TIMEOUT_S:g} s: {board.log_tail()}")


@pytest.fixture(scope="session")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoardProcess]:
    """One board process for every browser test of the session."""
    running = start_board(tmp_path_factory.mktemp("board"))
    yield running
    terminate(running.proc)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        pytest.fail("Debian chromium is not installed (scripts/setup.sh installs it)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, board: BoardProcess) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    new_page = context.new_page()
    yield new_page
    context.close()


def open_tab(page: Any, board: BoardProcess, name: str) -> None:
    """Load the board and switch to tab `name` (Data, Train, Runs, …)."""
    page.goto(board.url)
    page.get_by_role("tab", name=name, exact=True).click()


def screenshot(page: Any, name: str) -> Path | None:
    """Save `ui-<name>.png` into $SLM_UI_SHOTS (docs/images when refreshing docs/ui.md)."""
    folder = os.environ.get("SLM_UI_SHOTS")
    if not folder:
        return None
    path = Path(folder) / f"ui-{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path


def fill(field: Any, text: str) -> None:
    """Type into a field of an accordion that has just opened (its inputs render lazily, so a
    fill sent too early can be lost): retry until the field holds the text."""
    field.wait_for()
    for _ in range(5):
        field.fill(text)
        field.press("Tab")
        if field.input_value() == text:
            return
        field.page.wait_for_timeout(300)
    raise AssertionError(f"could not fill {text!r}")
