"""The audit log's write rate on its two backends: a SQLite file (the default) and PostgreSQL on
this machine (a real server, durability settings as it ships), measured in the same run.

    .venv/bin/python benchmarks/bench_state.py [--rows 5000] [--rounds 3]

Each round queues `rows` request rows into a fresh `AuditLog` at once and times until the writer
thread has committed them all (batches of up to 256 rows a transaction), then one feedback
look-up per row id for 500 ids (what `POST /v1/feedback` does for a row that is no longer in
memory). The median round is reported, with PostgreSQL's rate as a ratio of SQLite's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from report import finish, machine_line  # noqa: E402

from state_servers import PostgresServer, postgres_bin, start_postgres  # noqa: E402

LOOKUPS = 500


def _round(target: Path | str, rows: int) -> dict[str, float]:
    from slmkit.serve.audit import AuditLog, AuditRecord
    from slmkit.serve.config import AuditSettings

    log = AuditLog(AuditSettings(log_text=True), database=target)
    try:
        now = time.time()
        started = time.perf_counter()
        for i in range(rows):
            log.record(
                AuditRecord(
                    id=f"chatcmpl-{i}",
                    ts=now + i * 1e-3,
                    key_id="key-bench",
                    model="m",
                    endpoint="chat",
                    status=200,
                    prompt_tokens=40,
                    completion_tokens=32,
                    latency_s=0.5,
                    prompt_text=f"user: question {i}",
                    response_text="An answer.",
                )
            )
        log.flush()
        written = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(LOOKUPS):
            assert log._logged(f"chatcmpl-{i}")
        lookup = time.perf_counter() - started
    finally:
        log.close()
    return {"rows_per_s": rows / written, "lookup_ms": 1000 * lookup / LOOKUPS}


def _postgres_with_defaults(bindir: Path) -> PostgresServer:
    """The test server, but with fsync and synchronous commit as PostgreSQL ships them."""
    import state_servers

    saved = dict(state_servers.POSTGRES_SETTINGS)
    state_servers.POSTGRES_SETTINGS.update(fsync="on", synchronous_commit="on")
    state_servers.POSTGRES_SETTINGS.pop("full_page_writes")
    try:
        return start_postgres(bindir)
    finally:
        state_servers.POSTGRES_SETTINGS.clear()
        state_servers.POSTGRES_SETTINGS.update(saved)


def run(rows: int, rounds: int) -> dict[str, Any]:
    bindir = postgres_bin()
    if bindir is None:
        raise SystemExit("PostgreSQL not found: run scripts/setup.sh")
    server = _postgres_with_defaults(bindir)
    results: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgres": []}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-state-") as tmp:
            for n in range(rounds):  # alternate, so that a busy moment hits both
                results["sqlite"].append(_round(Path(tmp) / f"audit-{n}.db", rows))
                results["postgres"].append(_round(server.create_database(), rows))
    finally:
        server.stop()
    return {"machine": machine_line(), "rows": rows, "rounds": rounds, **results}


def _median(rounds: list[dict[str, float]], name: str) -> float:
    return statistics.median(r[name] for r in rounds)


def summarize(results: dict[str, Any]) -> str:
    sqlite, postgres = results["sqlite"], results["postgres"]
    rate = _median(postgres, "rows_per_s") / _median(sqlite, "rows_per_s")
    return "\n".join(
        [
            f"Machine: {results['machine']}. {results['rows']} audit rows queued at once, written "
            f"by the writer thread in batches; {LOOKUPS} feedback look-ups by id; median of "
            f"{results['rounds']} rounds. PostgreSQL 15 on the same machine over loopback, "
            "fsync on.",
            "",
            "| backend | rows/s written | look-up by id (ms) |",
            "|---|---|---|",
            *(
                f"| {name} | {_median(rounds, 'rows_per_s'):.0f} | "
                f"{_median(rounds, 'lookup_ms'):.3f} |"
                for name, rounds in (("SQLite (WAL)", sqlite), ("PostgreSQL", postgres))
            ),
            "",
            f"PostgreSQL writes audit rows at **{rate:.2f}x** SQLite's rate.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000, help="rows written per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per backend")
    args = parser.parse_args()
    finish("state", run(args.rows, args.rounds), summarize)


if __name__ == "__main__":
    main()
