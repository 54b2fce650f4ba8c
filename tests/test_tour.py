"""The README's tour is true: its bash blocks, taken from the README between `<!-- tour -->` and
`<!-- /tour -->`, run in order as one script in a fresh folder (the only change: a free port for
8000), on the embedded model; then what each step left behind is checked."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from slmkit.child_process import free_port

TOUR = re.compile(r"<!-- tour -->(.*?)<!-- /tour -->", re.DOTALL)
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)
# what the tour's folder needs from a checkout (set-up made .venv)
CHECKOUT = (".venv", "examples", "recipes")


def tour_script(readme: str) -> str:
    """The tour's bash blocks, in order, as one script."""
    found = TOUR.search(readme)
    assert found, "README.md has no <!-- tour --> ... <!-- /tour --> section"
    return "\n".join(BASH_BLOCK.findall(found.group(1)))


def test_the_tour_is_bash_blocks_that_write_only_into_runs_tour() -> None:
    script = tour_script((REPO / "README.md").read_text())
    commands = [line for line in script.splitlines() if line.startswith("slm ")]
    assert [c.split()[1] for c in commands][:3] == ["doctor", "chat", "data"]
    assert "slm train recipes/tour.yaml" in script
    assert "runs/demo" not in script  # `make demo`'s folder
    written = re.findall(r"(?:-o|--out)\s+(\S+)", script)
    assert written and all(path.startswith("runs/tour/") for path in written), written


def test_the_tour_heading_says_how_long_it_takes() -> None:
    readme = (REPO / "README.md").read_text()
    assert re.search(r"^## A tour \(about \d+ minutes on 2 CPU cores\)$", readme, re.MULTILINE)


def _eval_scores(report: Path) -> dict[str, float]:
    data = json.loads(report.read_text())
    return {m["name"]: m["metrics"]["fact_recall"] for m in data["models"]}


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a hang guard, not a speed check
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    work = tmp_path / "slmkit"
    work.mkdir()
    for name in CHECKOUT:
        (work / name).symlink_to(REPO / name)
    script = tour_script((REPO / "README.md").read_text()).replace("8000", str(free_port()))
    result = subprocess.run(
        # a server the tour left running is stopped whatever happens
        [
            "bash",
            "-c",
            "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script,
        ],
        cwd=work,
        env={**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=2300,
        check=False,
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    out = result.stdout
    assert "all required parts present and working" in out  # slm doctor
    assert "ok: 70 valid record(s), 0 error(s)" in out  # slm data validate

    run = work / "runs" / "tour"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    diagnosis = json.loads((run / "diagnosis.json").read_text())
    assert diagnosis["last_loss"] < diagnosis["first_loss"] / 2
    assert (run / "export" / "tour-q8_0.gguf").is_file()
    scores = _eval_scores(run / "eval" / "report.json")
    assert scores["tuned"] >= scores["base"] + 0.3, scores  # held-out questions on 5 facts
    assert scores["q8"] >= scores["tuned"] - 0.2, scores

    # the served answer was corrected through /v1/feedback; the correction is now training data
    rows = [json.loads(line) for line in (run / "feedback.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert rows[0]["messages"][-1] == {
        "role": "assistant",
        "content": "Brindlewood gift cards are valid for 1,000 days from the purchase date.",
    }
