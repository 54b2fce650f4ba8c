"""The improvement loop on the embedded model, through real processes: questions the base model
gets wrong are asked of a running `slm serve`, corrected (and one answer approved) through
/v1/feedback, exported with `slm feedback export --to sft`, trained with `slm train`, and the new
version, served from its run folder, answers the corrected facts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run_slm
from serve_helpers import ServerProcess, needs_llama_server
from slmkit.evaluate.metrics import contains_fact

# invented shop facts no base model knows: (question, correction, the fact it must state)
FACTS = [
    (
        "What does Brindlewood charge for gift wrapping?",
        "Gift wrapping at Brindlewood costs $4.75 per item.",
        "$4.75",
    ),
    (
        "Which courier delivers Brindlewood orders to Iceland?",
        "Brindlewood orders to Iceland are delivered by Puffin Post.",
        "Puffin Post",
    ),
    (
        "What is the name of Brindlewood's store cat?",
        "Brindlewood's store cat is called Captain Mittens.",
        "Captain Mittens",
    ),
]
APPROVED = "Say hello to a customer in one short sentence."
SERVE_CONFIG = {
    "llamacpp": {"ctx_size": 1024, "parallel": 2, "threads": 1},
    "audit": {"log_text": True},
}


def recipe(folder: Path, data: Path) -> dict[str, Any]:
    """A small LoRA that memorises a handful of rows: high lr, many passes, bounded steps."""
    return {
        "model": "default",
        "output_dir": str(folder / "run"),
        "data": {"train": [str(data)], "cutoff_len": 128},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "train": {
            "lr": 3.0e-3,
            "max_steps": 16,
            "batch_size": 4,
            "warmup_ratio": 0.0,
            "scheduler": "constant",
            "save_steps": 1000,
            "logging_steps": 4,
            "report_to": [],
        },
    }


def ask(server: ServerProcess, model: str, question: str) -> Any:
    return server.client().chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=40,
        temperature=0,
    )


def recall(answers: list[str]) -> float:
    return sum(
        contains_fact(a, fact) for a, (_, _, fact) in zip(answers, FACTS, strict=True)
    ) / len(FACTS)


@needs_llama_server
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_corrections_posted_to_the_gateway_teach_the_next_version(tmp_path: Path) -> None:
    started = time.monotonic()
    home = tmp_path / "home"
    env = {"SLM_HOME": str(home)}
    with ServerProcess(["default"], config=SERVE_CONFIG, env=env) as server:
        replies = [ask(server, "default", q) for q, _, _ in FACTS]
        before = [r.choices[0].message.content or "" for r in replies]
        approved = ask(server, "default", APPROVED)
        for reply, (_, correction, _) in zip(replies, FACTS, strict=True):
            posted = server.post(
                "/v1/feedback",
                {"id": reply.id, "rating": -1, "correction": correction, "tags": ["wrong_fact"]},
            )
            assert posted.status_code == 200, posted.text
        assert server.post("/v1/feedback", {"id": approved.id, "rating": 1}).status_code == 200
        too_many = server.post(
            "/v1/feedback", {"id": approved.id, "rating": 1, "tags": [f"t{i}" for i in range(9)]}
        )
        too_long = server.post("/v1/feedback", {"id": approved.id, "rating": 1, "tags": ["x" * 33]})
        assert too_many.status_code == too_long.status_code == 400
        assert too_long.json()["error"]["param"] == "tags"
    audit = home / "serve" / "audit.db"
    data = tmp_path / "feedback_sft.jsonl"
    exported = run_slm("feedback", "export", "--audit", str(audit), "--since", "1h", "--to", "sft", "-o", str(data), env=env)  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert [r["messages"][-1]["content"] for r in rows[:3]] == [c for _, c, _ in FACTS]
    assert len(rows) == 4 and rows[3]["messages"][0]["content"] == APPROVED
    stats = run_slm("feedback", "stats", "--audit", str(audit), "--json", env=env)
    assert json.loads(stats.stdout)[0]["failing_tags"] == {"wrong_fact": 3}, stats.stderr

    recipe_path = tmp_path / "loop.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe(tmp_path, data), sort_keys=False))
    served_s = time.monotonic() - started
    trained = run_slm("train", str(recipe_path), env=env, timeout=800)
    assert trained.returncode == 0, trained.stderr[-3000:]
    trained_s = time.monotonic() - started - served_s
    with ServerProcess([f"tuned={tmp_path / 'run'}"], env=env) as tuned_server:
        after = [
            ask(tuned_server, "tuned", q).choices[0].message.content or "" for q, _, _ in FACTS
        ]
    print(
        f"fact recall on the corrected items: base {recall(before):.2f} -> tuned {recall(after):.2f}"
    )
    print(f"base answers: {before}\ntuned answers: {after}")
    total = time.monotonic() - started
    print(
        f"round trip {total:.0f} s: serve+feedback+export {served_s:.0f} s, train {trained_s:.0f} s"
    )
    assert recall(before) <= 1 / 3, before  # the base model did not know these facts
    assert recall(after) >= 2 / 3, after
