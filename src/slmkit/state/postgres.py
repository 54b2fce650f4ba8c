"""The PostgreSQL backend: psycopg 3 with a connection pool, so the audit writer and the request
threads each take a connection of their own; an advisory lock serialises migrations between
gateways that start together."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from slmkit.state.config import display_url
from slmkit.state.sql import Params, Row, StateError, to_postgres

INSTALL = "pip install 'slmkit[shared]'"
CONNECT_TIMEOUT_S = 5
POOL_SIZE = 4  # the audit writer, feedback look-ups and readers: a few at once at most
WAIT_S = 10  # longest wait for a pooled connection (a server that went away) before an error
MIGRATION_LOCK = 0x534C4D  # pg_advisory_xact_lock key of schema migrations ("SLM")
# the pool logs every failed reconnection in several lines; the audit log's own warning (one line
# a minute) says it once
logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)


def _driver(setting: str) -> Any:
    try:
        import psycopg
        import psycopg_pool  # noqa: F401 - checked here so a missing pool fails with the driver
    except ImportError:
        raise StateError(
            f"{setting}: a PostgreSQL URL needs the psycopg driver; install it with {INSTALL}"
        ) from None
    return psycopg


def _reason(exc: Exception, url: str) -> str:
    """The server's answer in one line, without the password should the message repeat it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    text = text.rsplit(" failed: ", 1)[-1]
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


def host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


class PostgresTransaction:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Params = ()) -> None:
        self.conn.execute(to_postgres(sql), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(to_postgres(sql), [tuple(r) for r in rows])

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        rows: list[Row] = self.conn.execute(to_postgres(sql), tuple(params)).fetchall()
        return rows


class PostgresDatabase:
    kind = "postgres"
    rowid = "seq"

    def __init__(self, url: str, *, read_only: bool = False, setting: str = "state.database"):
        psycopg = _driver(setting)
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        self.where = display_url(url)
        self.Error: type[Exception] = psycopg.Error
        self.read_only = read_only
        options = "-c default_transaction_read_only=on" if read_only else ""
        kwargs = {"row_factory": dict_row, "connect_timeout": CONNECT_TIMEOUT_S}
        if options:
            kwargs["options"] = options
        try:  # once by hand: the pool would only say that it timed out
            psycopg.connect(url, **kwargs).close()
        except psycopg.OperationalError as exc:
            raise StateError(
                f"{setting}: cannot connect to PostgreSQL at {host_port(url)}: {_reason(exc, url)}"
            ) from None
        except psycopg.Error as exc:
            raise StateError(
                f"{setting}: {self.where} is not a usable PostgreSQL URL: {_reason(exc, url)}"
            ) from None
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            kwargs=kwargs,
            timeout=WAIT_S,
            check=ConnectionPool.check_connection,  # a server restart leaves no stale connection
            open=True,
            name="slm-state",
        )

    @contextmanager
    def transaction(self, *, lock: bool = False) -> Iterator[PostgresTransaction]:
        with self._pool.connection() as conn, conn.transaction():
            if lock:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            yield PostgresTransaction(conn)

    def columns(self, table: str) -> set[str]:
        with self.transaction() as tx:
            rows = tx.query(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = ?",
                (table,),
            )
        return {row["column_name"] for row in rows}

    def close(self) -> None:
        self._pool.close()
