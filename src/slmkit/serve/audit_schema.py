"""The audit log's tables on SQLite and PostgreSQL, their migrations, and how readers open it.

SQLite files written by earlier releases have no `schema_migrations` table: migration 1 creates
what is missing and adds the columns that came later, so they open as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.state.migrations import Migration, migrate
from slmkit.state.sql import Database, StateError, Transaction, describe_target, open_database

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, key_id TEXT, model TEXT, endpoint TEXT, status INTEGER,
    error_code TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, latency_s REAL, ttft_s REAL,
    stream INTEGER, cached INTEGER, prompt_text TEXT, response_text TEXT, route TEXT,
    route_reason TEXT, served_by TEXT, replica TEXT, sources TEXT, version TEXT, source TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL, ts REAL NOT NULL, rating INTEGER NOT NULL, correction TEXT, tags TEXT
)
"""
SCHEMA = SQLITE_SCHEMA  # the name earlier releases used

POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, key_id TEXT, model TEXT, endpoint TEXT,
    status INTEGER, error_code TEXT, prompt_tokens BIGINT, completion_tokens BIGINT,
    latency_s DOUBLE PRECISION, ttft_s DOUBLE PRECISION, stream INTEGER, cached INTEGER,
    prompt_text TEXT, response_text TEXT, route TEXT, route_reason TEXT, served_by TEXT,
    replica TEXT, sources TEXT, version TEXT, prompt_messages TEXT, source TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
CREATE TABLE IF NOT EXISTS feedback (
    seq BIGSERIAL PRIMARY KEY, request_id TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL,
    rating INTEGER NOT NULL, correction TEXT, tags TEXT
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback(request_id)
"""

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
# likewise for the feedback table
LATER_FEEDBACK_COLUMNS = {"tags": "TEXT"}
MONITOR_SOURCE = "monitor"  # the X-SLM-Source header value the drift monitor sends


def _sqlite_tables(tx: Transaction) -> None:
    """Create what is missing and add the later columns to a file of an earlier release."""
    for statement in SQLITE_SCHEMA.split(";"):
        tx.execute(statement)
    for table, later in (("requests", LATER_COLUMNS), ("feedback", LATER_FEEDBACK_COLUMNS)):
        have = {row["name"] for row in tx.query(f"PRAGMA table_info({table})")}
        for name, kind in later.items():
            if name not in have:
                tx.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


MIGRATIONS = [Migration(1, "requests and feedback", _sqlite_tables, POSTGRES_SCHEMA)]


def open_for_writing(target: Path | str) -> Database:
    """The audit database, created or brought up to date (the gateway's writer)."""
    db = open_database(target)
    try:
        migrate(db, "audit", MIGRATIONS)
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def reading(target: Path | str, hint: str) -> Iterator[Database]:
    """The audit database opened read-only for a reader command, closed afterwards; one line
    naming `target` (and `hint`) when there is no audit log there."""
    try:
        db = open_database(target, read_only=True)
    except StateError as exc:
        if exc.message.startswith("no database at"):
            raise SlmError(f"no audit log at {target}", hint=hint) from None
        raise
    try:
        try:
            have = db.columns("requests")
        except db.Error as exc:
            raise SlmError(
                f"{describe_target(target)}: not an audit log of `slm serve` ({exc})"
            ) from None
        if "id" not in have:
            raise SlmError(f"no audit log at {describe_target(target)}", hint=hint)
        yield db
    finally:
        db.close()


def user_traffic(db: Database) -> str:
    """A SQL condition on `requests` keeping what users sent: the drift monitor's probes are
    left out of statistics, alerts, the A/B report and cost profiles (always true on audit logs
    older than the `source` column, which are opened read-only and cannot gain it)."""
    if "source" not in db.columns("requests"):
        return "1 = 1"
    return f"COALESCE(source, '') != '{MONITOR_SOURCE}'"
