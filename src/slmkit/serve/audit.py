"""The audit log: one SQLite row (WAL mode) per request, written by a background thread.

Text is stored only with `log_text: true`, after the redaction rules; API keys only as hashes.
"""

from __future__ import annotations

import collections
import hashlib
import json
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slmkit.console import warn
from slmkit.serve.config import AuditSettings

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, key_id TEXT, model TEXT, endpoint TEXT, status INTEGER,
    error_code TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, latency_s REAL, ttft_s REAL,
    stream INTEGER, cached INTEGER, prompt_text TEXT, response_text TEXT, route TEXT,
    route_reason TEXT, served_by TEXT, replica TEXT, sources TEXT, version TEXT, source TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL, ts REAL NOT NULL, rating INTEGER NOT NULL, correction TEXT, tags TEXT
);
"""


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


# columns added after the first release: older audit files get them on open
LATER_COLUMNS = {
    "route": "TEXT",
    "route_reason": "TEXT",
    "served_by": "TEXT",
    "replica": "TEXT",
    "sources": "TEXT",
    "version": "TEXT",
    "prompt_messages": "TEXT",
    "source": "TEXT",
}
MONITOR_SOURCE = "monitor"  # the X-SLM-Source header value the drift monitor sends


def user_traffic(conn: sqlite3.Connection) -> str:
    """A SQL condition on `requests` keeping what users sent: the drift monitor's probes are
    left out of statistics, alerts, the A/B report and cost profiles (always true on audit logs
    older than the `source` column, which are opened read-only and cannot gain it)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    return f"COALESCE(source, '') != '{MONITOR_SOURCE}'" if "source" in have else "1"


# likewise for the feedback table
LATER_FEEDBACK_COLUMNS = {"tags": "TEXT"}


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    have = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    for name, kind in LATER_COLUMNS.items():
        if name not in have:
            conn.execute(f"ALTER TABLE requests ADD COLUMN {name} {kind}")
    have = {row[1] for row in conn.execute("PRAGMA table_info(feedback)")}
    for name, kind in LATER_FEEDBACK_COLUMNS.items():
        if name not in have:
            conn.execute(f"ALTER TABLE feedback ADD COLUMN {name} {kind}")
    conn.commit()
    return conn


QUEUE_SIZE = 50_000  # rows waiting for the writer; beyond that a row is dropped (and counted)
BATCH = 256  # rows written per transaction
RECENT_IDS = 100_000  # ids of recent requests kept in memory, so feedback need not wait for disk


class AuditLog:
    """A bounded queue and a writer thread, so the event loop never waits on disk.

    The writer redacts the text (off the event loop), writes whatever is queued in one
    transaction (up to BATCH rows), and counts what goes wrong through `on_problem(kind)`:
    `dropped` (the queue was full), `write_error` (SQLite refused a batch). Feedback for a
    request that is still queued is accepted without waiting for it to be written.
    """

    def __init__(
        self, settings: AuditSettings, on_problem: Callable[[str], None] | None = None
    ) -> None:
        self.settings = settings
        self.path = settings.db_path()
        self.rules = [(name, re.compile(p)) for name, p in settings.redact.items()]
        self.on_problem = on_problem or (lambda kind: None)
        self._queue: queue.Queue[AuditRecord | tuple[str, Any] | None] = queue.Queue(QUEUE_SIZE)
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._recent_lock = threading.Lock()
        self._warned_at = 0.0
        self._conn = connect(self.path)
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

    def record(self, rec: AuditRecord) -> None:
        """Queue a request's row (never blocks; redacted by the writer)."""
        if not self.settings.log_text:
            rec.prompt_text = rec.response_text = rec.prompt_messages = None
        try:
            self._queue.put_nowait(rec)
        except queue.Full:
            self._problem("dropped", f"audit queue full ({QUEUE_SIZE} rows): rows are dropped")
            return
        with self._recent_lock:
            self._recent[rec.id] = None
            if len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)

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
        if not known and not self._logged(request_id):
            return False
        row = (request_id, time.time(), rating, correction, json.dumps(tags or []))
        self._queue.put(("feedback", row))  # may wait for room: this runs in a worker thread
        self.flush()
        return True

    def _logged(self, request_id: str) -> bool:
        reader = sqlite3.connect(self.path, timeout=10)
        try:
            found = reader.execute("SELECT 1 FROM requests WHERE id = ?", (request_id,)).fetchone()
        finally:
            reader.close()
        return found is not None

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._conn.close()

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

    def _write(self, items: list[AuditRecord | tuple[str, Any]]) -> None:
        """One transaction for a batch of rows (redacted here, off the event loop); when SQLite
        refuses the batch, each row on its own, so one bad row costs only itself."""
        for item in items:
            if isinstance(item, AuditRecord) and self.settings.log_text:
                item.prompt_text = self.redact(item.prompt_text)
                item.response_text = self.redact(item.response_text)
                item.prompt_messages = self.redact_messages(item.prompt_messages)
        try:
            with self._conn:
                for item in items:
                    self._insert(item)
            return
        except sqlite3.Error:
            pass
        for item in items:
            try:
                with self._conn:
                    self._insert(item)
            except sqlite3.Error as exc:  # the audit log must never take the gateway down
                self._problem(
                    "write_error", f"audit log {self.path}: a row was not written ({exc})"
                )

    def _insert(self, item: AuditRecord | tuple[str, Any]) -> None:
        if isinstance(item, AuditRecord):
            row = asdict(item)
            cols = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            self._conn.execute(
                f"INSERT OR REPLACE INTO requests ({cols}) VALUES ({marks})", list(row.values())
            )
        else:
            request_id, ts, rating, correction, tags = item[1]
            self._conn.execute(
                "INSERT INTO feedback (request_id, ts, rating, correction, tags)"
                " VALUES (?, ?, ?, ?, ?)",
                (request_id, ts, rating, self.redact(correction), tags),
            )
