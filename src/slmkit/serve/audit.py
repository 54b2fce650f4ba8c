"""The audit log: one row per request, written by a background thread, in a SQLite file (WAL
mode; the default) or in PostgreSQL (`state.database`), which several gateways can share.

Text is stored only with `log_text: true`, after the redaction rules; API keys only as hashes.
"""

from __future__ import annotations

import collections
import hashlib
import json
import queue
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slmkit.console import warn
from slmkit.serve.audit_schema import MONITOR_SOURCE as MONITOR_SOURCE  # the gateway's import
from slmkit.serve.audit_schema import open_for_writing
from slmkit.serve.config import AuditSettings
from slmkit.state.sql import StateError, describe_target, query, upsert_sql


def key_id(api_key: str | None) -> str | None:
    """A stable, non-reversible id of an API key (the key itself is never stored)."""
    if not api_key:
        return None
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


@dataclass
class AuditRecord:
    id: str
    ts: float
    key_id: str | None
    model: str | None
    endpoint: str
    status: int
    error_code: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    stream: bool = False
    cached: bool = False
    prompt_text: str | None = None
    response_text: str | None = None
    route: str | None = None  # the route's public id when the request came through a route
    route_reason: str | None = None  # why it ended where it did: `default`, `rule:…`, `escalated:…`
    served_by: str | None = None  # the model id that produced the answer (a route's target)
    replica: str | None = None  # the replica of that model that answered
    sources: str | None = None  # JSON list of the RAG passages' sources injected into the prompt
    version: str | None = None  # the model version that answered (A/B split, registry alias)
    prompt_messages: str | None = None  # JSON of the chat messages as asked (with log_text only)
    source: str | None = None  # "monitor" for the drift monitor's probes; None: a user's request

    def row(self) -> list[Any]:
        """The values in RECORD_COLUMNS order (flags as 0/1, as both databases store them)."""
        return [int(v) if isinstance(v, bool) else v for v in asdict(self).values()]


RECORD_COLUMNS = list(AuditRecord.__dataclass_fields__)

QUEUE_SIZE = 50_000  # rows waiting for the writer; beyond that a row is dropped (and counted)
BATCH = 256  # rows written per transaction
RECENT_IDS = 100_000  # ids of recent requests kept in memory, so feedback need not wait for disk


class AuditLog:
    """A bounded queue and a writer thread, so the event loop never waits on disk.

    The writer redacts the text (off the event loop), writes whatever is queued in one
    transaction (up to BATCH rows: requests answered together are committed together), and
    counts what goes wrong through `on_problem(kind)`: `dropped` (the queue was full),
    `write_error` (the database refused a row). `record` returns a future that says when the row
    is committed, so a caller may answer only then (`audit.durable`). Feedback is written at once
    (it is answered `stored` only once it is); for a request that is still queued it does not
    wait for the request's row, and one another gateway logged in the same PostgreSQL database
    is found there.
    """

    def __init__(
        self,
        settings: AuditSettings,
        on_problem: Callable[[str], None] | None = None,
        *,
        database: Path | str | None = None,
    ) -> None:
        self.settings = settings
        # a SQLite file or a PostgreSQL URL (the serve config's `audit_target()`), else the file
        self.path: Path | str = database if database is not None else settings.db_path()
        self.where = describe_target(self.path)
        self.rules = [(name, re.compile(p)) for name, p in settings.redact.items()]
        self.on_problem = on_problem or (lambda kind: None)
        self._queue: queue.Queue[tuple[AuditRecord, Future[None]] | None] = queue.Queue(QUEUE_SIZE)
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._recent_lock = threading.Lock()
        self._warned_at = 0.0
        self.healthy = True  # the last batch was written (callers stop waiting while it is not)
        self._db = open_for_writing(self.path)
        self._upsert = upsert_sql(self._db, "requests", RECORD_COLUMNS)
        self._thread = threading.Thread(target=self._write_loop, name="audit-writer", daemon=True)
        self._thread.start()

    def redact(self, text: str | None) -> str | None:
        if text is None:
            return None
        for name, pattern in self.rules:
            text = pattern.sub(f"[{name}]", text)
        return text

    def redact_messages(self, raw: str | None) -> str | None:
        """The redaction rules over the text of each message of a JSON message list."""
        if raw is None:
            return None
        messages = json.loads(raw)
        for message in messages:
            content = message.get("content")
            if isinstance(content, str):
                message["content"] = self.redact(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        part["text"] = self.redact(part["text"])
        return json.dumps(messages, ensure_ascii=False)

    def record(self, rec: AuditRecord) -> Future[None]:
        """Queue a request's row (never blocks; redacted by the writer). The future is done when
        the row is committed, or failed when it was dropped or refused."""
        if not self.settings.log_text:
            rec.prompt_text = rec.response_text = rec.prompt_messages = None
        written: Future[None] = Future()
        try:
            self._queue.put_nowait((rec, written))
        except queue.Full:
            self._problem("dropped", f"audit queue full ({QUEUE_SIZE} rows): rows are dropped")
            _settle(written, StateError(f"audit log {self.where}: queue full"))
            return written
        with self._recent_lock:
            self._recent[rec.id] = None
            if len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)
        return written

    def add_feedback(
        self,
        request_id: str,
        rating: int,
        correction: str | None,
        tags: list[str] | None = None,
    ) -> bool:
        """Store feedback for a logged request (written when this returns True); False when no
        such request was logged."""
        with self._recent_lock:
            known = request_id in self._recent
        try:
            if not known and not self._logged(request_id):
                return False
            with self._db.transaction() as tx:  # written before it is answered `stored`
                tx.execute(
                    "INSERT INTO feedback (request_id, ts, rating, correction, tags)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        request_id,
                        time.time(),
                        rating,
                        self.redact(correction),
                        json.dumps(tags or []),
                    ),
                )
        except self._db.Error as exc:
            raise StateError(f"audit log {self.where}: feedback not stored ({exc})") from exc
        return True

    def _logged(self, request_id: str) -> bool:
        return bool(query(self._db, "SELECT 1 AS found FROM requests WHERE id = ?", (request_id,)))

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._db.close()

    def _problem(self, kind: str, message: str) -> None:
        self.on_problem(kind)
        now = time.monotonic()
        if now - self._warned_at > 60:  # at most one line a minute
            self._warned_at = now
            warn(message)

    def _write_loop(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write([item for item in items if item is not None])
            finally:
                for _ in items:
                    self._queue.task_done()
            if None in items:
                return

    def _write(self, items: list[tuple[AuditRecord, Future[None]]]) -> None:
        """One transaction for a batch of rows (redacted here, off the event loop); when the
        database refuses the batch, each row on its own, so one bad row costs only itself."""
        for rec, _ in items:
            if self.settings.log_text:
                rec.prompt_text = self.redact(rec.prompt_text)
                rec.response_text = self.redact(rec.response_text)
                rec.prompt_messages = self.redact_messages(rec.prompt_messages)
        try:
            self._insert([rec for rec, _ in items])
        except self._db.Error:
            pass
        else:
            self.healthy = True
            for _, written in items:
                _settle(written)
            return
        for rec, written in items:
            try:
                self._insert([rec])
            except self._db.Error as exc:  # the audit log must never take the gateway down
                self.healthy = False
                self._problem(
                    "write_error", f"audit log {self.where}: a row was not written ({exc})"
                )
                _settle(written, StateError(f"audit log {self.where}: {exc}"))
            else:
                self.healthy = True
                _settle(written)

    def _insert(self, records: list[AuditRecord]) -> None:
        with self._db.transaction() as tx:
            tx.executemany(self._upsert, [rec.row() for rec in records])


def _settle(written: Future[None], error: Exception | None = None) -> None:
    """Tell a row's caller how its write went (a caller that stopped waiting is not told)."""
    if written.set_running_or_notify_cancel():
        if error is None:
            written.set_result(None)
        else:
            written.set_exception(error)
