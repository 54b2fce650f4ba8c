"""Alert state shared by the gateways on one PostgreSQL database (`state.database`).

Each gateway checks the alert rules over the shared audit log, so all of them see every
gateway's requests; a change (firing, resolved) is claimed in the `alert_states` table by one
conditional update, and only the gateway whose update moved the rule logs it and posts the
webhook: one notification per change, however many gateways watch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from prometheus_client import Gauge

from slmkit.serve.alert_config import AlertRule
from slmkit.serve.alerts import AlertWatcher, Window, default_server_name
from slmkit.serve.audit_schema import open_for_writing
from slmkit.serve.config import ServeConfig
from slmkit.serve.logs import window_of
from slmkit.state.migrations import Migration, migrate
from slmkit.state.sql import Database

SCHEMA = """CREATE TABLE IF NOT EXISTS alert_states (
    rule TEXT PRIMARY KEY, status TEXT NOT NULL, changed DOUBLE PRECISION NOT NULL, server TEXT
)"""
MIGRATIONS = [Migration(1, "alert states", SCHEMA, SCHEMA)]


class SharedAlerts:
    """The rules' windows over the shared audit log, and the claim of each change."""

    def __init__(self, target: Path | str) -> None:
        self.target = target
        self._db: Database | None = None
        self._lock = threading.Lock()

    def _open(self) -> Database:
        with self._lock:  # opened on first use, by the watcher (in a worker thread)
            if self._db is None:
                db = open_for_writing(self.target)  # the audit tables, then this one
                migrate(db, "alerts", MIGRATIONS)
                self._db = db
            return self._db

    def window(self, rule: AlertRule, now: float) -> Window:
        return window_of(self._open(), rule, now)

    def claim(
        self, rule: str, status: Literal["firing", "resolved"], now: float, server: str
    ) -> bool:
        """Move `rule` to `status`; True only for the one gateway whose update moved it."""
        with self._open().transaction() as tx:
            tx.execute(
                "INSERT INTO alert_states (rule, status, changed) VALUES (?, 'resolved', 0)"
                " ON CONFLICT (rule) DO NOTHING",
                (rule,),
            )
            moved = tx.query(
                "UPDATE alert_states SET status = ?, changed = ?, server = ?"
                " WHERE rule = ? AND status != ? RETURNING rule",
                (status, now, server, rule, status),
            )
        return bool(moved)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def alert_watcher(
    config: ServeConfig, gauge: Gauge, notify: Callable[[dict[str, Any]], None] | None
) -> AlertWatcher:
    """The gateway's watcher of `alerts:`: over its own requests, or with `state.database` over
    every gateway's, each change announced by one of them."""
    database = config.state.database_url()
    return AlertWatcher(
        config.alerts,
        gauge,
        notify=notify,
        interval_s=config.alerting.check_interval_s,
        server=config.alerting.server or default_server_name(config.port),
        shared=SharedAlerts(database) if database else None,
    )
