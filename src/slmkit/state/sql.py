"""One small interface over the two databases shared state lives in: a SQLite file (the default,
nothing to set up) and PostgreSQL (several gateways on one database).

SQL is written once with `?` placeholders; the PostgreSQL backend turns them into `%s`. Rows come
back as dicts. `open_database` takes a file path or a `postgresql://` URL.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from slmkit.errors import SlmError
from slmkit.state.config import display_url, is_database_url

Params = Sequence[Any]
Row = dict[str, Any]


class StateError(SlmError):
    """The configured database cannot be used (missing driver, unreachable, refused login)."""


class Transaction(Protocol):
    """Statements run inside one transaction: committed together, or not at all."""

    def execute(self, sql: str, params: Params = ()) -> None: ...

    def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...

    def query(self, sql: str, params: Params = ()) -> list[Row]: ...


class Database(Protocol):
    """A SQLite file or a PostgreSQL database, through the same calls."""

    kind: str  # "sqlite" | "postgres"
    where: str  # the file or the URL without its password: what messages show
    rowid: str  # a column that orders a table's rows as they were inserted
    Error: type[Exception]  # what the backend raises when a statement fails

    def transaction(self, *, lock: bool = False) -> AbstractContextManager[Transaction]:
        """One transaction; `lock` first takes the database's write lock (migrations)."""
        ...

    def columns(self, table: str) -> set[str]: ...

    def close(self) -> None: ...


def execute(db: Database, sql: str, params: Params = ()) -> None:
    """One statement in its own transaction."""
    with db.transaction() as tx:
        tx.execute(sql, params)


def executemany(db: Database, sql: str, rows: Iterable[Params]) -> None:
    """One statement over many rows, in one transaction."""
    with db.transaction() as tx:
        tx.executemany(sql, rows)


def query(db: Database, sql: str, params: Params = ()) -> list[Row]:
    with db.transaction() as tx:
        return tx.query(sql, params)


def has_table(db: Database, table: str) -> bool:
    return bool(db.columns(table))


def upsert_sql(db: Database, table: str, columns: Sequence[str], key: str = "id") -> str:
    """INSERT that replaces the row with the same `key`: `INSERT OR REPLACE` on SQLite,
    `INSERT ... ON CONFLICT (key) DO UPDATE` on PostgreSQL."""
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    if db.kind == "sqlite":
        return f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})"
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != key)
    return f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT ({key}) DO UPDATE SET {updates}"


@functools.lru_cache(maxsize=256)
def to_postgres(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (a literal `%`, as in LIKE 'a%', doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def open_database(
    target: str | Path, *, read_only: bool = False, setting: str = "state.database"
) -> Database:
    """A SQLite file (created when missing, unless `read_only`) or a PostgreSQL URL.

    `setting` names where the URL came from in the one-line errors (missing driver, a server
    that cannot be reached)."""
    if is_database_url(target):
        from slmkit.state.postgres import PostgresDatabase

        return PostgresDatabase(str(target), read_only=read_only, setting=setting)
    from slmkit.state.sqlite import SqliteDatabase

    return SqliteDatabase(Path(target), read_only=read_only)


def describe_target(target: str | Path) -> str:
    """A database as messages may show it: the file path, or the URL without its password."""
    return display_url(str(target)) if is_database_url(target) else str(target)
