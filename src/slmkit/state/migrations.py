"""Versioned schema migrations, recorded in a `schema_migrations` table (component, version).

Why not Alembic: it would be one more dependency (and SQLAlchemy with it) for a schema of two
tables, and its migrations are written for one dialect at a time; here each step names what it
does on SQLite and on PostgreSQL, and old SQLite audit files (with no migrations table) are
brought up to date by the same steps that create a new database.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from slmkit.state.sql import Database, Transaction

Step = str | Callable[[Transaction], None]  # statements separated by `;`, or a function

TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (component, version)
)"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sqlite: Step
    postgres: Step


def _run(step: Step, tx: Transaction) -> None:
    if callable(step):
        step(tx)
        return
    for statement in step.split(";"):
        if statement.strip():
            tx.execute(statement)


def migrate(db: Database, component: str, migrations: Sequence[Migration]) -> list[int]:
    """Apply the migrations of `component` not applied yet, in one transaction under the
    database's write lock (two gateways starting together apply each one once); returns the
    versions applied now."""
    applied: list[int] = []
    with db.transaction(lock=True) as tx:
        tx.execute(TABLE)
        done = {
            row["version"]
            for row in tx.query(
                "SELECT version FROM schema_migrations WHERE component = ?", (component,)
            )
        }
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version in done:
                continue
            _run(migration.sqlite if db.kind == "sqlite" else migration.postgres, tx)
            tx.execute(
                "INSERT INTO schema_migrations (component, version, name, applied_at) "
                "VALUES (?, ?, ?, ?)",
                (component, migration.version, migration.name, time.time()),
            )
            applied.append(migration.version)
    return applied
