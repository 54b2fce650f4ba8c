"""The README's tour is true: its bash blocks, taken from the README between `<!-- tour -->` and
`<!-- /tour -->`, run in order as one script in a fresh folder (the only change: a free port for
8000), on the embedded model; then what each step left behind is checked."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO
from serve_helpers import ServerProcess
from slmkit.child_process import free_port
from slmkit.evaluate.metrics import fact_recall
from train_helpers import write_jsonl

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


@dataclass
class Tour:
    work: Path  # the folder the tour ran in (a user's checkout)
    stdout: str

    @property
    def run(self) -> Path:
        return self.work / "runs" / "tour"


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> Tour:
    """The README's tour, run once for this module's tests."""
    work = tmp_path_factory.mktemp("tour") / "slmkit"
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
    return Tour(work, result.stdout)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a hang guard, not a speed check
def test_the_readme_tour_runs_as_written(tour: Tour) -> None:
    out = tour.stdout
    assert "all required parts present and working" in out  # slm doctor
    assert "ok: 70 valid record(s), 0 error(s)" in out  # slm data validate

    run = tour.run
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


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_tours_export_is_a_complete_folder_that_renders_prompts_as_training_did(
    tour: Tour, embedded_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    from slmkit.export.llama_server import LlamaServerProcess

    out = tour.run / "export"
    export = json.loads((out / "export.json").read_text())
    assert export["parity"]["passed"] and not export["parity"]["template_mismatches"]
    assert export["recommended"] in {f["file"] for f in export["files"]}
    assert export["gguf_check"]["chat_template"] == "present, equal to the tokenizer's"
    assert {
        "Modelfile",
        "README.md",
        "serve.sh",
        "report.html",
        "report.json",
        "chat_template.jinja",
    } <= {p.name for p in out.iterdir()}
    assert 'PARAMETER stop "<|im_end|>"' in (out / "Modelfile").read_text()
    assert "--jinja" in (out / "serve.sh").read_text()
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    messages = [{"role": "user", "content": "Which promo code do new customers get?"}]
    with LlamaServerProcess(out / "tour-q8_0.gguf") as server:
        assert server.apply_template(messages) == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_tours_facts_are_served_from_an_int8_onnx_export(
    tour: Tour, tmp_path: Path, slm: Any
) -> None:
    """The tour's run exported to ONNX int8 and served by `slm serve --engine onnx`: it answers
    the held-out questions that the q8_0 GGUF answered right (most of them), streamed or not."""
    report = json.loads((tour.run / "eval" / "report.json").read_text())
    right = [
        (item["messages"][-1]["content"], item["must_include"][0])
        for item in report["items"]
        if item["answers"]["q8"]["scores"]["fact_recall"] == 1.0
    ][:3]
    assert right, "the q8_0 GGUF answered no held-out question right"
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p, _ in right])
    heldout = tmp_path / "heldout.txt"  # two short chunks keep the test fast
    heldout.write_text((REPO / "examples" / "data" / "heldout.txt").read_text()[:2400])
    out = tmp_path / "onnx"
    args = ["--format", "onnx", "--precision", "int8", "--prompts", str(prompts)]
    proc = slm("export", str(tour.run), *args, "--heldout", str(heldout), "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    export = json.loads((out / "export.json").read_text())
    (int8,) = export["files"]
    assert export["recommended"] == int8["file"] == "tour-onnx-int8"
    assert 0 < int8["size_bytes"] < 400 * 2**20  # fp32 weights alone are 538 MB
    level = json.loads((out / "report.json").read_text())["quant_eval"]["levels"][0]
    assert level["kld"]["same_top1"] > 0.8

    with ServerProcess([f"--model=tour={out}", "--engine", "onnx"]) as server:
        client = server.client()
        answers = []
        for prompt, _ in right:
            messages = [{"role": "user", "content": prompt}]
            reply = client.chat.completions.create(
                model="tour", messages=messages, temperature=0, max_tokens=48
            )
            answers.append(reply.choices[0].message.content or "")
            assert "<|im_end|>" not in answers[-1] and reply.choices[0].finish_reason == "stop"
        hits = sum(
            fact_recall(answer, [keyword]) == 1.0
            for (_, keyword), answer in zip(right, answers, strict=True)
        )
        assert hits >= (len(right) + 1) // 2, list(zip(right, answers, strict=True))
        stream = client.chat.completions.create(
            model="tour",
            messages=[{"role": "user", "content": right[0][0]}],
            temperature=0,
            max_tokens=48,
            stream=True,
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answers[0]
