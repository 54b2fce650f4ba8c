"""Browser-test harness for the board: one real `slm ui` process per test session, run in a
project folder of its own (`support-desk/`: runs, data, models and the board's SLM_HOME), headless
Debian Chromium driven by Playwright, and helpers to open a tab and take the screenshots docs/ui.md
shows (written when SLM_UI_SHOTS names a folder).

Files a test shows on the page go into that folder (`board.place("data/x.jsonl")`,
`board_model`), so the paths in the screenshots read like a user's, not like pytest's temp tree.

tests/conftest.py imports the fixtures for every test module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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
PROJECT_NAME = "support-desk"


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
    """A running `slm ui` on a free loopback port, started in the project folder `folder`."""

    url: str
    folder: Path
    runs_dir: Path
    home: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self) -> str:
        return log_tail(self.log, lines=20)

    def place(self, relative: str) -> Path:
        """A path inside the project folder (its parent created): where a test puts the files it
        types into the page."""
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def start_board(root: Path, extra_args: list[str] | None = None) -> BoardProcess:
    runs, home = root / "runs", root / ".slmkit"
    runs.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = home / "board.log"
    env = {**os.environ, "SLM_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "slmkit.cli", "ui", "--port", str(port), "--runs", str(runs)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd + (extra_args or []), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root
        )
    board = BoardProcess(f"http://127.0.0.1:{port}", root, runs, home, proc, log)
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


def project_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The board's project folder: in the session's temp folder, or, when the screenshots are
    refreshed, a fresh `/tmp/support-desk` (`-gw0` … under xdist), whose short path is what the
    pictures in docs/ show."""
    if not os.environ.get("SLM_UI_SHOTS"):
        return tmp_path_factory.mktemp("board") / PROJECT_NAME
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    folder = Path(tempfile.gettempdir()) / (f"{PROJECT_NAME}-{worker}" if worker else PROJECT_NAME)
    shutil.rmtree(folder, ignore_errors=True)  # the runs and jobs of an earlier refresh
    return folder


@pytest.fixture(scope="session")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoardProcess]:
    """One board process for every browser test of the session."""
    running = start_board(project_folder(tmp_path_factory))
    yield running
    terminate(running.proc)


@pytest.fixture(scope="session")
def board_model(board: BoardProcess, tiny_model_dir: Path) -> Path:
    """The tiny test model, copied to `models/tiny-llama` in the board's project folder."""
    target = board.place("models/tiny-llama")
    shutil.copytree(tiny_model_dir, target, dirs_exist_ok=True)
    return target


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium for one test module. Not per session: Playwright's sync API keeps an
    asyncio loop running on the main thread while it is open, and the tests of a later module in
    the same worker that call `asyncio.run` would fail ("cannot be called from a running event
    loop")."""
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
    page.wait_for_function(CHARTS_DRAWN)
    page.wait_for_timeout(500)  # let the layout around the charts settle
    page.wait_for_function(CHARTS_DRAWN)
    page.screenshot(path=str(path), full_page=True)
    return path


# Every chart on the page shows its marks. The tabs' polls redraw their charts, and a picture taken
# in the middle of a redraw shows empty axes.
CHARTS_DRAWN = """() => [...document.querySelectorAll('.vega-embed')]
    .filter(chart => chart.offsetParent !== null)
    .every(chart => chart.querySelector(".mark-line path[d*='L'], .mark-rect path[d]"))"""


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
