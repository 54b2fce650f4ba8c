"""The audit log's writer: batched transactions, redaction off the event loop, a bounded queue
whose overflow is counted, a bad row that costs only itself, feedback for a queued request."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from slmkit.serve import audit as audit_module
from slmkit.serve.audit import AuditLog, AuditRecord
from slmkit.serve.config import AuditSettings


def _record(i: int, **more: Any) -> AuditRecord:
    return AuditRecord(
        id=f"chatcmpl-{i}", ts=time.time(), key_id=None, model="m", endpoint="chat", status=200,
        **more,
    )  # fmt: skip


def _rows(path: Path, query: str = "SELECT id FROM requests") -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchall()


def test_many_rows_are_written_and_text_is_redacted(tmp_path: Path) -> None:
    settings = AuditSettings(path=tmp_path / "a.db", log_text=True)
    log = AuditLog(settings)
    for i in range(2000):
        log.record(_record(i, prompt_text=f"mail me at user{i}@example.com"))
    log.flush()
    texts = [t for (t,) in _rows(settings.db_path(), "SELECT prompt_text FROM requests")]
    log.close()
    assert len(texts) == 2000 and all("@" not in t and "[email]" in t for t in texts), texts[:2]


def test_a_row_sqlite_refuses_costs_only_itself(tmp_path: Path) -> None:
    problems: list[str] = []
    log = AuditLog(AuditSettings(path=tmp_path / "a.db"), problems.append)
    writer_blocked = threading.Event()
    real_write = log._write

    def slow_write(items: list[Any]) -> None:
        writer_blocked.wait(10)  # the rows below queue up and are written as one batch
        real_write(items)

    log._write = slow_write  # type: ignore[method-assign]
    for i in range(5):
        log.record(_record(i, error_code={"not": "bindable"} if i == 2 else None))  # type: ignore[arg-type]
    writer_blocked.set()
    log.flush()
    ids = sorted(i for (i,) in _rows(tmp_path / "a.db"))
    log.close()
    assert ids == ["chatcmpl-0", "chatcmpl-1", "chatcmpl-3", "chatcmpl-4"]
    assert problems == ["write_error"]


def test_a_full_queue_drops_and_counts_instead_of_blocking(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(audit_module, "QUEUE_SIZE", 10)
    problems: list[str] = []
    log = AuditLog(AuditSettings(path=tmp_path / "a.db"), problems.append)
    release = threading.Event()
    real_write = log._write

    def stuck_write(items: list[Any]) -> None:
        release.wait(10)
        real_write(items)

    log._write = stuck_write  # type: ignore[method-assign]
    for i in range(30):  # a blocking put would never return: the writer is stuck until below
        log.record(_record(i))
    dropped = problems.count("dropped")
    assert dropped >= 30 - 2 * 10  # the queue holds 10, the stuck writer's batch at most 10 more
    assert not log.add_feedback("chatcmpl-29", 1, None)  # a dropped row has no feedback
    release.set()
    log.flush()
    written = len(_rows(tmp_path / "a.db"))
    log.close()
    assert written == 30 - dropped


def test_feedback_for_a_request_still_queued_is_accepted_and_written(tmp_path: Path) -> None:
    log = AuditLog(AuditSettings(path=tmp_path / "a.db", log_text=True))
    log.record(_record(1))
    assert log.add_feedback("chatcmpl-1", -1, "The window is 41 days, write me at a@b.example")
    assert not log.add_feedback("chatcmpl-unknown", 1, None)
    feedback = _rows(tmp_path / "a.db", "SELECT request_id, rating, correction FROM feedback")
    log.close()
    assert feedback == [("chatcmpl-1", -1, "The window is 41 days, write me at [email]")]
