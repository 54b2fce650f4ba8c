"""The board's Runs tab and `slm ui` itself: runs trained from the CLI show with status and loss
curve, a killed run shows as interrupted, and a board exposed without a password is refused."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_slm
from slmkit.child_process import interruptible
from slmkit.train.run_index import list_runs, read_run
from slmkit.ui.app import TABS
from train_helpers import tiny_recipe, write_jsonl, write_recipe
from ui_helpers import needs_browser, open_tab, screenshot

ROWS = [
    {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
    for i in range(12)
]


def _manifest(run_dir: Path, **values: object) -> Path:
    run_dir.mkdir(parents=True)
    data = {"method": "sft", "finetuning_type": "lora", "base_model": "tiny", "status": "running"}
    data.update(values)
    (run_dir / "manifest.json").write_text(json.dumps(data))
    return run_dir


def test_run_index_tells_running_killed_failed_and_nested_runs(tmp_path: Path) -> None:
    _manifest(tmp_path / "live", pid=os.getpid(), created="2026-01-03")
    _manifest(tmp_path / "killed", pid=2**22 + 17, created="2026-01-02")  # no such process
    _manifest(tmp_path / "broken", status="failed", error="DataError: x", created="2026-01-01")
    _manifest(tmp_path / "pipe" / "dpo", method="dpo", status="finished", created="2026-01-04")
    (tmp_path / "not-a-run").mkdir()
    runs = {r.name: r for r in list_runs(tmp_path)}
    assert set(runs) == {"live", "killed", "broken", "dpo"}
    assert runs["live"].status == "running"
    assert runs["killed"].status == "interrupted"
    assert runs["broken"].status == "failed" and runs["broken"].error == "DataError: x"
    assert next(r.name for r in list_runs(tmp_path)) == "dpo"  # newest first


def test_ctrl_c_leaves_an_interrupted_resumable_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "run", data, max_steps=400, save_steps=2)
    path = write_recipe(tmp_path / "r.yaml", recipe)
    proc = subprocess.Popen(
        [sys.executable, "-m", "slmkit.cli", "train", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=interruptible,  # even when the suite itself runs in a script's background
    )
    checkpoints = tmp_path / "run" / "checkpoints"
    deadline = time.monotonic() + 300
    # any checkpoint: with save_steps 2, checkpoint-2 may be rotated out between two looks
    while (
        not any(checkpoints.glob("checkpoint-*/trainer_state.json"))
        and proc.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, output[-2000:]
    run = read_run(tmp_path / "run")
    assert run is not None and run.status == "interrupted" and run.resumable
    assert run.steps is not None and run.steps >= 2 and len(run.data_hash) == 12


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--host", "0.0.0.0"],
            "error: --auth: binding 0.0.0.0 exposes the board to the network: give --auth",
        ),
        (["--auth", "nopassword"], "error: --auth: expected user:password"),
        (["--port", "0"], "--port"),
    ],
)
def test_board_refuses_bad_settings_in_one_line(args: list[str], message: str) -> None:
    done = run_slm("ui", *args, timeout=60)
    assert done.returncode == 2
    assert message in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_board_on_a_busy_port_says_so() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = run_slm("ui", "--port", str(port), timeout=60)
    assert done.returncode == 2
    assert f"error: --port {port}: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@needs_browser
@pytest.mark.browser
def test_a_run_trained_from_the_cli_shows_its_curve_in_runs(board, page, board_model: Path) -> None:
    data = write_jsonl(board.place("data/train.jsonl"), ROWS)
    run_dir = board.runs_dir / "cli-run"
    recipe = write_recipe(board.place("cli-run.yaml"), tiny_recipe(board_model, run_dir, data))
    done = run_slm("train", str(recipe), "--set", "train.max_steps=6")
    assert done.returncode == 0, done.stderr[-2000:]
    _manifest(board.runs_dir / "killed-run", pid=2**22 + 17, created="2026-01-01T00:00:00Z")

    open_tab(page, board, "Runs")
    tabs = [t.strip() for t in page.get_by_role("tab").all_inner_texts()]
    assert tabs == [title for title, _ in TABS]
    table = page.locator("#runs-table")
    table.get_by_text("cli-run", exact=True).first.wait_for()
    assert table.get_by_text("finished").count() >= 1
    assert table.get_by_text("interrupted").count() >= 1
    page.locator("#runs-pick input").click()
    page.get_by_role("option", name="cli-run", exact=True).click()
    page.keyboard.press("Escape")  # close the list
    page.locator("#runs-plot .mark-line path").first.wait_for()  # the curve is drawn
    assert "finished" in page.locator("#runs-status").inner_text()
    assert "max_steps: 6" in page.locator("#runs-recipe").inner_text()
    screenshot(page, "runs")
