"""The model registry: versions and aliases in one SQLite file (`$SLM_HOME/registry.db`, WAL
mode), or in PostgreSQL when several gateways follow the same aliases (`SLM_REGISTRY` set to a
`postgresql://` URL, or the serve config's `state.database` for the aliases a gateway serves).

A version is a run folder or an export folder (or a model registered by hand), numbered `v1`,
`v2`, … in the order they were first registered; registering the same path again updates its
row. An alias (`support`) points at one version; every move is kept in `alias_moves`.
Several processes may register at once: each write is one transaction under the database's write
lock (SQLite's `BEGIN IMMEDIATE`, a PostgreSQL advisory lock).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from slmkit.errors import SlmError
from slmkit.paths import slm_home
from slmkit.state.config import is_database_url
from slmkit.state.migrations import Migration, migrate
from slmkit.state.sql import Database, Row, StateError, Transaction, describe_target, open_database

VersionKind = Literal["run", "export", "model"]
VERSION_ID = re.compile(r"^v([1-9][0-9]*)$")
ALIAS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
REGISTRY_ENV = "SLM_REGISTRY"  # a registry file or a postgresql:// URL instead of the default

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
)
"""
MIGRATIONS = [
    Migration(
        1,
        "versions, aliases and their moves",
        sqlite=SCHEMA,
        postgres=SCHEMA.replace("REAL", "DOUBLE PRECISION").replace(
            "num INTEGER PRIMARY KEY AUTOINCREMENT", "num BIGSERIAL PRIMARY KEY"
        ),
    )
]


class RegistryError(SlmError):
    """An unknown version id or alias, or a bad alias name."""


def registry_path() -> Path:
    """`$SLM_HOME/registry.db`."""
    return slm_home() / "registry.db"


def default_registry() -> Path | str:
    """`SLM_REGISTRY` (a file or a `postgresql://` URL) when set, else `$SLM_HOME/registry.db`."""
    given = os.environ.get(REGISTRY_ENV, "").strip()
    if not given:
        return registry_path()
    return given if is_database_url(given) else Path(given).expanduser()


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
    """Versions and aliases in a SQLite file or a PostgreSQL database (opened on first use)."""

    def __init__(self, target: Path | str | None = None) -> None:
        self.target: Path | str = target if target is not None else default_registry()
        if isinstance(self.target, str) and not is_database_url(self.target):
            self.target = Path(self.target)
        self.where = describe_target(self.target)  # what messages show (never a password)
        self._db: Database | None = None

    @property
    def path(self) -> Path:
        """The SQLite file (for messages and tests of the file backend)."""
        return self.target if isinstance(self.target, Path) else Path(self.where)

    def _missing(self) -> bool:
        """A SQLite registry that was never written: reads find nothing and create no file."""
        return isinstance(self.target, Path) and not self.target.is_file()

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[Transaction]:
        """One transaction (a write takes the write lock: one writer at a time, across
        processes and gateways); any database failure is one RegistryError."""
        try:
            if self._db is None:
                db = open_database(self.target, setting=REGISTRY_ENV)
                migrate(db, "registry", MIGRATIONS)
                self._db = db
            with self._db.transaction(lock=write) as tx:
                yield tx
        except Exception as exc:
            if not _database_error(exc):
                raise
            raise RegistryError(f"{self.where}: registry unusable ({exc})") from exc

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

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
        data = json.dumps(data_files or {})
        with self._connect(write=True) as tx:
            if not tx.query("SELECT num FROM versions WHERE path = ?", (key,)):
                # ids stay gap-free: the next number is taken inside the write lock
                tx.execute(
                    "INSERT INTO versions (num, kind, path, created, updated)"
                    " VALUES ((SELECT COALESCE(MAX(num), 0) + 1 FROM versions), ?, ?, ?, ?)",
                    (kind, key, now, now),
                )
            tx.execute(
                "UPDATE versions SET kind = ?, parent = COALESCE(?, parent),"
                " recipe_sha256 = COALESCE(?, recipe_sha256),"
                " data_files = CASE WHEN ? = '{}' THEN data_files ELSE ? END,"
                " export_files = COALESCE(?, export_files), note = COALESCE(?, note), updated = ?"
                " WHERE path = ?",
                (
                    kind,
                    parent,
                    recipe_sha256,
                    data,
                    data,
                    None if export_files is None else json.dumps(export_files),
                    note,
                    now,
                    key,
                ),
            )
            row = tx.query("SELECT * FROM versions WHERE path = ?", (key,))[0]
        return self._version(row, {})

    def set_eval_scores(self, version_id: str, scores: dict[str, Any]) -> None:
        self._update(version_id, "eval_scores", json.dumps(scores))

    def set_note(self, version_id: str, note: str) -> None:
        self._update(version_id, "note", note)

    def _update(self, version_id: str, column: str, value: str) -> None:
        num = version_num(version_id)
        with self._connect(write=True) as tx:
            if not tx.query("SELECT 1 FROM versions WHERE num = ?", (num,)):
                raise self._unknown(version_id)
            tx.execute(
                f"UPDATE versions SET {column} = ?, updated = ? WHERE num = ?",
                (value, time.time(), num),
            )

    def get(self, version_id: str) -> Version:
        num = version_num(version_id)
        with self._connect() as tx:
            rows = tx.query("SELECT * FROM versions WHERE num = ?", (num,))
            aliases = self._alias_map(tx)
        if not rows:
            raise self._unknown(version_id)
        return self._version(rows[0], aliases)

    def find_by_path(self, path: Path | str) -> Version | None:
        """The version registered for this path (a run or export folder), if any."""
        if self._missing():
            return None
        key = str(Path(path).expanduser().resolve())
        with self._connect() as tx:
            rows = tx.query("SELECT * FROM versions WHERE path = ?", (key,))
            aliases = self._alias_map(tx)
        return self._version(rows[0], aliases) if rows else None

    def versions(self) -> list[Version]:
        """Newest first."""
        if self._missing():
            return []
        with self._connect() as tx:
            rows = tx.query("SELECT * FROM versions ORDER BY num DESC")
            aliases = self._alias_map(tx)
        return [self._version(row, aliases) for row in rows]

    # -- aliases ------------------------------------------------------------------------------
    def promote(self, version_id: str, alias: str) -> AliasMove:
        """Point `alias` at `version_id`; the move is kept in the history."""
        check_alias_name(alias)
        num = version_num(version_id)
        canonical = f"v{num}"
        now = time.time()
        with self._connect(write=True) as tx:
            if not tx.query("SELECT 1 FROM versions WHERE num = ?", (num,)):
                raise self._unknown(version_id)
            old = tx.query("SELECT version FROM aliases WHERE alias = ?", (alias,))
            tx.execute(
                "INSERT INTO aliases (alias, version, moved) VALUES (?, ?, ?)"
                " ON CONFLICT(alias) DO UPDATE SET version=excluded.version, moved=excluded.moved",
                (alias, canonical, now),
            )
            previous = old[0]["version"] if old else None
            tx.execute(
                "INSERT INTO alias_moves (alias, version, previous, moved) VALUES (?, ?, ?, ?)",
                (alias, canonical, previous, now),
            )
        return AliasMove(alias, canonical, previous, now)

    def alias_target(self, alias: str) -> str | None:
        """The version id an alias points at now, None when the alias was never promoted."""
        if self._missing():
            return None
        with self._connect() as tx:
            rows = tx.query("SELECT version FROM aliases WHERE alias = ?", (alias,))
        return str(rows[0]["version"]) if rows else None

    def alias_moves(self, alias: str | None = None) -> list[AliasMove]:
        """Every move of every alias (or of one), newest first."""
        if self._missing():
            return []
        query = "SELECT alias, version, previous, moved FROM alias_moves"
        args: tuple[str, ...] = ()
        if alias is not None:
            query, args = query + " WHERE alias = ?", (alias,)
        with self._connect() as tx:
            rows = tx.query(query + " ORDER BY num DESC", args)
        return [AliasMove(r["alias"], r["version"], r["previous"], r["moved"]) for r in rows]

    def resolve(self, ref: str) -> Version:
        """`@v3` or `@support` (with or without the `@`) -> the version it names now."""
        name = ref.strip().removeprefix("@")
        if VERSION_ID.match(name):
            return self.get(name)
        target = self.alias_target(name)
        if target is None:
            known = ", ".join(sorted({m.alias for m in self.alias_moves()})) or "none"
            raise RegistryError(
                f"unknown alias {name!r} in the registry {self.where}",
                hint=f"aliases: {known}; point one with `slm models promote ID --as {name}`",
            )
        return self.get(target)

    # -- rows ---------------------------------------------------------------------------------
    def _unknown(self, version_id: str) -> RegistryError:
        return RegistryError(
            f"unknown version {version_id!r} in the registry {self.where}",
            hint="`slm models versions` lists them",
        )

    @staticmethod
    def _alias_map(tx: Transaction) -> dict[str, list[str]]:
        by_version: dict[str, list[str]] = {}
        for row in tx.query("SELECT alias, version FROM aliases ORDER BY alias"):
            by_version.setdefault(row["version"], []).append(row["alias"])
        return by_version

    @staticmethod
    def _version(row: Row, aliases: dict[str, list[str]]) -> Version:
        version_id = f"v{row['num']}"
        scores, exports = row["eval_scores"], row["export_files"]
        return Version(
            id=version_id,
            kind=row["kind"],
            path=row["path"],
            parent=row["parent"],
            recipe_sha256=row["recipe_sha256"],
            data_files=json.loads(row["data_files"] or "{}"),
            eval_scores=json.loads(scores) if scores else None,
            export_files=json.loads(exports) if exports else None,
            created=row["created"],
            updated=row["updated"],
            note=row["note"],
            aliases=aliases.get(version_id, []),
        )


def _database_error(exc: BaseException) -> bool:
    """A failure of the database (SQLite, PostgreSQL, or opening it), not a bug of ours."""
    return isinstance(exc, (StateError, OSError)) or type(exc).__module__.split(".")[0] in (
        "sqlite3",
        "psycopg",
        "psycopg_pool",
    )
