"""The model registry: one SQLite file (`$SLM_HOME/registry.db`, WAL mode) of versions and aliases.

A version is a run folder or an export folder (or a model registered by hand), numbered `v1`,
`v2`, … in the order they were first registered; registering the same path again updates its
row. An alias (`support`) points at one version; every move is kept in `alias_moves`.
Several processes may register at once: each write is one `BEGIN IMMEDIATE` transaction.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from slmkit.errors import SlmError
from slmkit.paths import slm_home

VersionKind = Literal["run", "export", "model"]
VERSION_ID = re.compile(r"^v([1-9][0-9]*)$")
ALIAS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
BUSY_TIMEOUT_MS = 30_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    num INTEGER PRIMARY KEY, kind TEXT NOT NULL, parent TEXT, path TEXT NOT NULL UNIQUE,
    recipe_sha256 TEXT, data_files TEXT NOT NULL DEFAULT '{}', eval_scores TEXT, export_files TEXT,
    created REAL NOT NULL, updated REAL NOT NULL, note TEXT
);
CREATE TABLE IF NOT EXISTS aliases (
    alias TEXT PRIMARY KEY, version TEXT NOT NULL, moved REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alias_moves (
    num INTEGER PRIMARY KEY AUTOINCREMENT, alias TEXT NOT NULL, version TEXT NOT NULL,
    previous TEXT, moved REAL NOT NULL
);
"""


class RegistryError(SlmError):
    """An unknown version id or alias, or a bad alias name."""


def registry_path() -> Path:
    """`$SLM_HOME/registry.db`."""
    return slm_home() / "registry.db"


@dataclass
class Version:
    """One registered model version."""

    id: str
    kind: str
    path: str
    parent: str | None = None
    recipe_sha256: str | None = None
    data_files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    eval_scores: dict[str, Any] | None = None
    export_files: list[dict[str, Any]] | None = None  # [{name, size_bytes}]
    created: float = 0.0
    updated: float = 0.0
    note: str | None = None
    aliases: list[str] = field(default_factory=list)

    @property
    def main_score(self) -> str:
        """`fact_recall 0.812`, or empty before `slm eval` ran on it."""
        scores = self.eval_scores or {}
        value = scores.get("main")
        if not isinstance(value, (int, float)):
            return ""
        return f"{scores.get('main_metric', 'main')} {value:.3f}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "parent": self.parent,
            "path": self.path,
            "recipe_sha256": self.recipe_sha256,
            "data_files": self.data_files,
            "eval_scores": self.eval_scores,
            "export_files": self.export_files,
            "created": _iso(self.created),
            "updated": _iso(self.updated),
            "note": self.note,
            "aliases": self.aliases,
        }


@dataclass
class AliasMove:
    alias: str
    version: str
    previous: str | None
    moved: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "version": self.version,
            "previous": self.previous,
            "moved": _iso(self.moved),
        }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def version_num(version_id: str) -> int:
    """`v3` -> 3; anything else is a one-line error."""
    match = VERSION_ID.match(version_id.strip())
    if not match:
        raise RegistryError(f"{version_id!r} is not a version id", hint="ids look like v1, v2, …")
    return int(match.group(1))


def check_alias_name(alias: str) -> str:
    if VERSION_ID.match(alias) or not ALIAS_NAME.match(alias):
        raise RegistryError(
            f"bad alias name {alias!r}",
            hint="1-64 of letters, digits, . _ - starting with a letter, and not like v3",
        )
    return alias


class Registry:
    """Versions and aliases in one SQLite file; every method opens its own short connection."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or registry_path()

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            if write:
                conn.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes
            try:
                yield conn
            except BaseException:
                if write:
                    conn.execute("ROLLBACK")
                raise
            if write:
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"{self.path}: registry unusable ({exc})") from exc
        finally:
            conn.close()

    # -- versions -----------------------------------------------------------------------------
    def register(
        self,
        path: Path | str,
        kind: VersionKind,
        *,
        parent: str | None = None,
        recipe_sha256: str | None = None,
        data_files: dict[str, str] | None = None,
        export_files: list[dict[str, Any]] | None = None,
        note: str | None = None,
    ) -> Version:
        """Add a version for `path`, or update the one already there (its id is kept)."""
        key = str(Path(path).expanduser().resolve())
        now = time.time()
        with self._connect(write=True) as conn:
            row = conn.execute("SELECT num FROM versions WHERE path = ?", (key,)).fetchone()
            if row is None:  # ids stay gap-free: the next number is taken inside the write lock
                conn.execute(
                    "INSERT INTO versions (num, kind, path, created, updated)"
                    " VALUES ((SELECT COALESCE(MAX(num), 0) + 1 FROM versions), ?, ?, ?, ?)",
                    (kind, key, now, now),
                )
            conn.execute(
                "UPDATE versions SET kind = ?, parent = COALESCE(?, parent),"
                " recipe_sha256 = COALESCE(?, recipe_sha256),"
                " data_files = CASE WHEN ? = '{}' THEN data_files ELSE ? END,"
                " export_files = COALESCE(?, export_files), note = COALESCE(?, note), updated = ?"
                " WHERE path = ?",
                (
                    kind,
                    parent,
                    recipe_sha256,
                    json.dumps(data_files or {}),
                    json.dumps(data_files or {}),
                    None if export_files is None else json.dumps(export_files),
                    note,
                    now,
                    key,
                ),
            )
            row = conn.execute("SELECT * FROM versions WHERE path = ?", (key,)).fetchone()
        return self._version(row, {})

    def set_eval_scores(self, version_id: str, scores: dict[str, Any]) -> None:
        with self._connect(write=True) as conn:
            cur = conn.execute(
                "UPDATE versions SET eval_scores = ?, updated = ? WHERE num = ?",
                (json.dumps(scores), time.time(), version_num(version_id)),
            )
            if cur.rowcount == 0:
                raise self._unknown(version_id)

    def set_note(self, version_id: str, note: str) -> None:
        with self._connect(write=True) as conn:
            cur = conn.execute(
                "UPDATE versions SET note = ?, updated = ? WHERE num = ?",
                (note, time.time(), version_num(version_id)),
            )
            if cur.rowcount == 0:
                raise self._unknown(version_id)

    def get(self, version_id: str) -> Version:
        num = version_num(version_id)
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM versions WHERE num = ?", (num,)).fetchone()
            aliases = self._alias_map(conn)
        if row is None:
            raise self._unknown(version_id)
        return self._version(row, aliases)

    def find_by_path(self, path: Path | str) -> Version | None:
        """The version registered for this path (a run or export folder), if any."""
        if not self.path.is_file():
            return None
        key = str(Path(path).expanduser().resolve())
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM versions WHERE path = ?", (key,)).fetchone()
            aliases = self._alias_map(conn)
        return None if row is None else self._version(row, aliases)

    def versions(self) -> list[Version]:
        """Newest first."""
        if not self.path.is_file():
            return []
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM versions ORDER BY num DESC").fetchall()
            aliases = self._alias_map(conn)
        return [self._version(row, aliases) for row in rows]

    # -- aliases ------------------------------------------------------------------------------
    def promote(self, version_id: str, alias: str) -> AliasMove:
        """Point `alias` at `version_id`; the move is kept in the history."""
        check_alias_name(alias)
        num = version_num(version_id)
        canonical = f"v{num}"
        now = time.time()
        with self._connect(write=True) as conn:
            if conn.execute("SELECT 1 FROM versions WHERE num = ?", (num,)).fetchone() is None:
                raise self._unknown(version_id)
            old = conn.execute("SELECT version FROM aliases WHERE alias = ?", (alias,)).fetchone()
            conn.execute(
                "INSERT INTO aliases (alias, version, moved) VALUES (?, ?, ?)"
                " ON CONFLICT(alias) DO UPDATE SET version=excluded.version, moved=excluded.moved",
                (alias, canonical, now),
            )
            previous = old[0] if old else None
            conn.execute(
                "INSERT INTO alias_moves (alias, version, previous, moved) VALUES (?, ?, ?, ?)",
                (alias, canonical, previous, now),
            )
        return AliasMove(alias, canonical, previous, now)

    def alias_target(self, alias: str) -> str | None:
        """The version id an alias points at now, None when the alias was never promoted."""
        if not self.path.is_file():
            return None
        with self._connect() as conn:
            row = conn.execute("SELECT version FROM aliases WHERE alias = ?", (alias,)).fetchone()
        return None if row is None else str(row[0])

    def alias_moves(self, alias: str | None = None) -> list[AliasMove]:
        """Every move of every alias (or of one), newest first."""
        if not self.path.is_file():
            return []
        query = "SELECT alias, version, previous, moved FROM alias_moves"
        args: tuple[str, ...] = ()
        if alias is not None:
            query, args = query + " WHERE alias = ?", (alias,)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY num DESC", args).fetchall()
        return [AliasMove(*row) for row in rows]

    def resolve(self, ref: str) -> Version:
        """`@v3` or `@support` (with or without the `@`) -> the version it names now."""
        name = ref.strip().removeprefix("@")
        if VERSION_ID.match(name):
            return self.get(name)
        target = self.alias_target(name)
        if target is None:
            known = ", ".join(sorted({m.alias for m in self.alias_moves()})) or "none"
            raise RegistryError(
                f"unknown alias {name!r} in the registry {self.path}",
                hint=f"aliases: {known}; point one with `slm models promote ID --as {name}`",
            )
        return self.get(target)

    # -- rows ---------------------------------------------------------------------------------
    def _unknown(self, version_id: str) -> RegistryError:
        return RegistryError(
            f"unknown version {version_id!r} in the registry {self.path}",
            hint="`slm models versions` lists them",
        )

    @staticmethod
    def _alias_map(conn: sqlite3.Connection) -> dict[str, list[str]]:
        by_version: dict[str, list[str]] = {}
        for alias, version in conn.execute("SELECT alias, version FROM aliases ORDER BY alias"):
            by_version.setdefault(version, []).append(alias)
        return by_version

    @staticmethod
    def _version(row: tuple[Any, ...], aliases: dict[str, list[str]]) -> Version:
        num, kind, parent, path, recipe, data, scores, exports, created, updated, note = row
        version_id = f"v{num}"
        return Version(
            id=version_id,
            kind=kind,
            path=path,
            parent=parent,
            recipe_sha256=recipe,
            data_files=json.loads(data or "{}"),
            eval_scores=json.loads(scores) if scores else None,
            export_files=json.loads(exports) if exports else None,
            created=created,
            updated=updated,
            note=note,
            aliases=aliases.get(version_id, []),
        )
