"""`slm feedback export` and `slm feedback stats` on an audit log written by the gateway's own
AuditLog: latest feedback per request wins, duplicates and unrated requests are counted and left
out, escalated answers become SFT data, PII is masked, the files validate, bad input is one line."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from slmkit.feedback.audit_reader import parse_flat_prompt
from slmkit.feedback.export import feedback_eval_rows
from slmkit.serve.audit import AuditLog, AuditRecord
from slmkit.serve.config import AuditSettings
from slmkit.serve.logs import parse_time

NOW = time.time()
SYSTEM = {"role": "system", "content": "You are Brindlewood's support desk.\nBe brief."}


def _ask(question: str) -> list[dict[str, Any]]:
    return [SYSTEM, {"role": "user", "content": question}]


# (id, minutes ago, model, messages, answer, extra audit fields)
REQUESTS: list[tuple[str, float, str, list[dict[str, Any]], str, dict[str, Any]]] = [
    ("r-corrected", 30, "small", _ask("How long is the warranty?"), "One year.", {}),
    (
        "r-up",
        29,
        "small",
        _ask("Phone number?"),
        "Call +1 555 010 0199 or mail help@shop.test.",
        {},
    ),
    (
        "r-up-again",
        28,
        "small",
        _ask("Phone number?"),
        "Call +1 555 010 0199 or mail help@shop.test.",
        {},
    ),
    ("r-down", 27, "small", _ask("Do you ship to Mars?"), "Yes, daily.", {}),
    ("r-none", 26, "small", _ask("Hello?"), "Hi!", {}),
    (
        "r-escalated",
        25,
        "support",
        _ask("Explain the loyalty tiers."),
        "Bronze, Silver and Gold.",
        {"route": "support", "route_reason": "escalated:refusal", "served_by": "big"},
    ),
    ("r-other", 24, "other", _ask("Store hours?"), "9 to 5.", {}),
    ("r-old", 60 * 24 * 30, "small", _ask("Old question?"), "Old answer.", {}),
    ("r-failed", 20, "small", _ask("Broken?"), "", {"status": 500}),
]
# (request id, rating, correction, tags), in the order posted
FEEDBACK: list[tuple[str, int, str | None, list[str]]] = [
    ("r-corrected", 1, None, []),
    ("r-corrected", -1, "The warranty lasts 7 years.", ["wrong_fact"]),  # the latest wins
    ("r-up", 1, None, []),
    ("r-up-again", 1, None, []),
    ("r-down", -1, None, ["wrong_fact", "made_up"]),
    ("r-other", 1, None, []),
    ("r-old", 1, None, []),
]


def fill_audit(path: Path, log_text: bool = True) -> Path:
    """The audit log as `slm serve` writes it (no redaction at log time: export must mask)."""
    log = AuditLog(AuditSettings(path=path, log_text=log_text, redact={}))
    try:
        for rid, minutes, model, messages, answer, extra in REQUESTS:
            flat = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
            fields = {"status": 200, **extra}
            log.record(
                AuditRecord(
                    id=rid,
                    ts=NOW - minutes * 60,
                    key_id=None,
                    model=model,
                    endpoint="chat",
                    prompt_text=flat,
                    response_text=answer,
                    prompt_messages=json.dumps(messages),
                    **fields,
                )
            )
        for rid, rating, correction, tags in FEEDBACK:
            assert log.add_feedback(rid, rating, correction, tags)
    finally:
        log.close()
    return path


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    return fill_audit(tmp_path / "audit.db")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_sft_latest_feedback_dedupe_escalations_and_masking(
    audit: Path, tmp_path: Path, slm
) -> None:
    out = tmp_path / "sft.jsonl"
    result = slm("feedback", "export", "--audit", str(audit), "--since", "1d", "--to", "sft", "-o", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(out)
    answers = [row["messages"][-1]["content"] for row in rows]
    # corrected (latest of two ratings), thumbs-up once (its twin is a duplicate), the escalation,
    # the other model; not the thumbs-down without correction, the unrated, the old, the failed
    assert answers == [
        "The warranty lasts 7 years.",
        "Call [redacted] or mail [redacted].",
        "Bronze, Silver and Gold.",
        "9 to 5.",
    ]
    assert rows[0]["messages"][:2] == _ask("How long is the warranty?")  # multi-line system kept
    for line, count in [
        ("requests read", 7),
        ("exported: thumbs-up", 2),
        ("exported: correction", 1),
        ("exported: escalated", 1),
        ("skipped: duplicate (prompt, answer)", 1),
        ("skipped: no feedback, not escalated", 1),
        ("skipped: thumbs-down without correction", 1),
        ("PII spans masked", 4),  # the twin was masked too, before it was found a duplicate
    ]:
        cells = [row.strip("│ ").split("│") for row in result.stdout.splitlines()]
        assert [line, str(count)] in [[c.strip() for c in cell] for cell in cells], result.stdout
    valid = slm("data", "validate", str(out), "--model", "none")
    assert valid.returncode == 0, valid.stdout + valid.stderr


def test_export_dpo_pairs_and_model_filter(audit: Path, tmp_path: Path, slm) -> None:
    out = tmp_path / "dpo.jsonl"
    result = slm("feedback", "export", "--audit", str(audit), "--since", "2020-01-01", "--to", "dpo", "-o", str(out), "--model", "small")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert read_jsonl(out) == [
        {
            "prompt": _ask("How long is the warranty?"),
            "chosen": "The warranty lasts 7 years.",
            "rejected": "One year.",
        }
    ]
    nothing = slm("feedback", "export", "--audit", str(audit), "--since", "1d", "--to", "dpo", "-o", str(tmp_path / "none.jsonl"), "--model", "other")  # fmt: skip
    assert nothing.returncode == 2 and not (tmp_path / "none.jsonl").exists()
    assert "error: nothing to export from 1 answered request(s)" in nothing.stderr


def test_export_kto_labels_every_rated_answer(audit: Path, tmp_path: Path, slm) -> None:
    out = tmp_path / "kto.jsonl"
    result = slm("feedback", "export", "--audit", str(audit), "--since", "1d", "--to", "kto", "-o", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(out)
    # a thumbs-down teaches with or without a correction; the correction is a good answer of its
    # own; the unrated and the escalated (never rated) requests are not rows
    assert [(row["messages"][-1]["content"], row["label"]) for row in rows] == [
        ("One year.", False),
        ("The warranty lasts 7 years.", True),
        ("Call [redacted] or mail [redacted].", True),
        ("Yes, daily.", False),
        ("9 to 5.", True),
    ]
    assert rows[3]["messages"][:2] == _ask("Do you ship to Mars?")
    cells = [[c.strip() for c in row.strip("│ ").split("│")] for row in result.stdout.splitlines()]
    for line, count in [
        ("exported: thumbs-up", 2),
        ("exported: thumbs-down", 2),
        ("exported: correction", 1),
        ("skipped: escalated: not rated", 1),
        ("skipped: duplicate (prompt, answer)", 1),
    ]:
        assert [line, str(count)] in cells, result.stdout
    # the data layer reads the file back as rated answers, ready for `method: kto`
    from slmkit.data import load_records

    loaded = load_records([out])
    assert not loaded.errors
    assert [(r.kind, r.label) for r in loaded.records] == [
        ("unpaired", label) for label in (False, True, True, False, True)
    ]


def test_eval_rows_are_approved_or_corrected_answers(audit: Path) -> None:
    from slmkit.evaluate.evalset import parse_item

    rows = feedback_eval_rows(audit, NOW - 3600, "small")
    assert [(r["reference"], r.get("tags")) for r in rows] == [
        ("The warranty lasts 7 years.", ["wrong_fact"]),
        ("Call [redacted] or mail [redacted].", None),
    ]
    assert rows[0]["id"] == "r-corrected"
    assert parse_item(rows[0], "feedback", 1).messages[-1]["content"] == "How long is the warranty?"
    assert feedback_eval_rows(audit, NOW + 60, None) == []


def test_stats_per_model_with_failing_tags(audit: Path, slm) -> None:
    result = slm("feedback", "stats", "--audit", str(audit), "--since", "1d", "--json")
    assert result.returncode == 0, result.stderr
    lines = {line["model"]: line for line in json.loads(result.stdout)}
    assert list(lines) == ["big", "other", "small", "all"]
    # small: 5 answered, 4 rated (corrected, up, up-again, down), 2 up, 2 down, 1 correction
    assert lines["small"] == {
        "model": "small",
        "requests": 5,
        "rated": 4,
        "rated_share": 0.8,
        "up": 2,
        "up_share": 0.5,
        "down": 2,
        "corrections": 1,
        "escalated": 0,
        "failing_tags": {"wrong_fact": 2, "made_up": 1},
    }
    assert (lines["big"]["escalated"], lines["big"]["rated"], lines["big"]["up_share"]) == (
        1,
        0,
        None,
    )
    assert (lines["all"]["requests"], lines["all"]["rated"]) == (7, 5)
    table = slm(
        "feedback", "stats", "--audit", str(audit), "--model", "small"
    )  # all time: r-old too
    assert table.returncode == 0, table.stderr
    assert "│ small │ 6        │ 5 (83%) │ 60% │ 2    │ 1" in table.stdout, table.stdout
    assert "top failing tags of small: wrong_fact 2, made_up 1" in table.stdout
    assert "big" not in table.stdout


def test_no_text_in_the_audit_log_asks_for_log_text(tmp_path: Path, slm) -> None:
    path = fill_audit(tmp_path / "no-text.db", log_text=False)
    result = slm("feedback", "export", "--audit", str(path), "--since", "1d", "--to", "sft", "-o", str(tmp_path / "x.jsonl"))  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "audit.log_text: true" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday", "--to", "sft"], "error: --since: 'yesterday' is not a date"),
        (["--since", "1d", "--until", "2020-01-01", "--to", "sft"], "error: --until: '2020-01-01'"),
        (
            ["--since", "1d", "--to", "orpo"],
            "error: --to: 'orpo' is not one of sft, dpo, kto, eval",
        ),
    ],
)
def test_bad_options_are_one_line_errors(
    audit: Path, tmp_path: Path, slm, args: list[str], message: str
) -> None:
    result = slm("feedback", "export", "--audit", str(audit), *args, "-o", str(tmp_path / "x.jsonl"))  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1


def test_missing_audit_log_is_one_line(tmp_path: Path, slm) -> None:
    result = slm("feedback", "stats", "--audit", str(tmp_path / "nope.db"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: no audit log at {tmp_path / 'nope.db'}")


def test_an_older_audit_file_gets_the_new_columns_and_still_exports(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the first release's schema
        conn.executescript(
            "CREATE TABLE requests (id TEXT PRIMARY KEY, ts REAL NOT NULL, key_id TEXT, model TEXT,"
            " endpoint TEXT, status INTEGER, error_code TEXT, prompt_tokens INTEGER,"
            " completion_tokens INTEGER, latency_s REAL, ttft_s REAL, stream INTEGER, cached INTEGER,"
            " prompt_text TEXT, response_text TEXT);"
            "CREATE TABLE feedback (request_id TEXT NOT NULL, ts REAL NOT NULL,"
            " rating INTEGER NOT NULL, correction TEXT);"
        )
        conn.execute(
            "INSERT INTO requests (id, ts, model, endpoint, status, prompt_text, response_text)"
            " VALUES ('old-1', ?, 'small', 'chat', 200, ?, 'Seven.')",
            (NOW, "system: Be brief.\nReally.\nuser: How many days?"),
        )
        conn.execute("INSERT INTO feedback VALUES ('old-1', ?, -1, 'Forty-one days.')", (NOW,))
    rows = feedback_eval_rows(path, None, None)  # read-only: no migration needed to read
    assert rows[0]["messages"] == [
        {"role": "system", "content": "Be brief.\nReally."},
        {"role": "user", "content": "How many days?"},
    ]
    log = AuditLog(AuditSettings(path=path, log_text=True))  # opening migrates it
    assert log.add_feedback("old-1", -1, "41 days.", ["wrong_number"])
    log.close()
    assert feedback_eval_rows(path, None, None)[0]["tags"] == ["wrong_number"]
    log = AuditLog(AuditSettings(path=path, log_text=True))
    assert log.add_feedback("old-1", -1, "Forty-one days.")  # the call without tags still works
    assert not log.add_feedback("no-such-request", 1, None)
    log.close()
    latest = feedback_eval_rows(path, None, None)[0]
    assert latest["reference"] == "Forty-one days." and "tags" not in latest


def test_parsers() -> None:
    assert parse_time("2026-11-27", "--since") == 1795737600.0
    assert parse_time("2026-11-27T01:00+01:00", "--since") == 1795737600.0
    assert parse_time("2h", "--since", now=10_000.0) == 2800.0
    assert parse_flat_prompt("no roles here") == [{"role": "user", "content": "no roles here"}]
