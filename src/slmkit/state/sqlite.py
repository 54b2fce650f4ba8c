"""The SQLite backend: one file, WAL mode, a connection per thread (readers never wait on the
writer), `BEGIN IMMEDIATE` as the write lock."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from slmkit.state.sql import Params, Row, StateError


class SqliteTransaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Params = ()) -> None:
        self.conn.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        self.conn.executemany(sql, (tuple(r) for r in rows))

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        return [dict(r) for r in self.conn.execute(sql, tuple(params)).fetchall()]


class SqliteDatabase:
    kind = "sqlite"
    rowid = "rowid"
    Error: type[Exception] = sqlite3.Error

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.where = str(path)
        self.read_only = read_only
        if read_only and not path.is_file():
            raise StateError(f"no database at {path}")
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._connection()  # a file that cannot be opened fails here, not at the first write

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self.read_only:
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, timeout=10, check_same_thread=False
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.row_factory = sqlite3.Row
        self._local.conn = conn
        with self._lock:
            self._opened.append(conn)
        return conn

    @contextmanager
    def transaction(self, *, lock: bool = False) -> Iterator[SqliteTransaction]:
        conn = self._connection()
        with conn:  # commit on success, roll back on an exception
            if lock:
                conn.execute("BEGIN IMMEDIATE")
            yield SqliteTransaction(conn)

    def columns(self, table: str) -> set[str]:
        rows = self._connection().execute(f"PRAGMA table_info({table})").fetchall()
        return {row[1] for row in rows}

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()
        self._local = threading.local()
