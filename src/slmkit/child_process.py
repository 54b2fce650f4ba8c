"""One way to run a server child process (llama-server, vllm serve): free loopback port, spawn
that dies with its parent, `/health` wait that notices a dead child, terminate -> kill, and a
one-line account of how a child ended (signal 4 is a build that uses instructions this CPU refuses).

Used by export's short-lived `LlamaServerProcess`, the gateway's supervised engines and the
decode check of set-up and `slm doctor`.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import httpx

REBUILD_HINT = (
    "rebuild the llama.cpp tools with `bash scripts/setup.sh`, which falls back to a portable "
    "build when one crashes"
)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_problem(host: str, port: int) -> str | None:
    """Why nothing can listen on `host:port` (e.g. 'Address already in use'), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def interruptible() -> None:
    """In the child before exec: Ctrl-C (SIGINT) interrupts it, as the board's Stop expects. A
    process started in the background by a script (`slm ui &`) inherits SIGINT ignored, and Python
    then never raises KeyboardInterrupt in its children."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _child_setup() -> None:
    """Interruptible, and on Linux the child gets SIGTERM when its parent dies (even by SIGKILL),
    so it is never orphaned."""
    interruptible()
    if sys.platform != "linux":
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def spawn(cmd: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start `cmd` with its output in `log`, no stdin, dying with this process."""
    return subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_child_setup,
    )


_SPAWNER: ThreadPoolExecutor | None = None
_SPAWNER_LOCK = threading.Lock()


def spawn_lasting(cmd: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """`spawn` from one long-lived thread. PR_SET_PDEATHSIG fires when the spawning *thread* exits,
    so a child started from a short-lived worker (a web handler's thread pool) would die with it."""
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            _SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slm-spawner")
    return _SPAWNER.submit(spawn, cmd, log).result()


_CLI_ERROR = re.compile(r"^(?:error|internal error): .*$", re.MULTILINE)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def log_text(path: str | Path, max_bytes: int = 6000) -> str:
    """The end of a child's log without terminal colour codes (carriage returns become lines)."""
    try:
        data = Path(path).read_bytes()[-max_bytes:]
    except OSError:
        return ""
    return _ANSI.sub("", data.decode(errors="replace")).replace("\r", "\n")


def last_error_line(path: str | Path) -> str:
    """The last `error: …` line an `slm` child printed (the CLI's one-line message), or ''."""
    found = _CLI_ERROR.findall(log_text(path, max_bytes=20000))
    return str(found[-1]).strip() if found else ""


def describe_exit(returncode: int | None) -> str:
    """'exited with code 1', 'crashed with signal 4 (SIGILL: illegal instruction)', 'is running'."""
    if returncode is None:
        return "is running"
    if returncode >= 0:
        return f"exited with code {returncode}"
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"crashed with signal {number}"
    what = signal.strsignal(number) or name
    return f"crashed with signal {number} ({name}: {what.lower()})"


def is_crash(returncode: int | None) -> bool:
    """A death by a CPU-fault signal (SIGILL, SIGSEGV, SIGBUS, SIGFPE): the binary is at fault."""
    crash_signals = {signal.SIGILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE}
    return returncode is not None and returncode < 0 and -returncode in crash_signals


def crash_hint(returncode: int | None) -> str:
    """The fix to print beside a crash (empty when the child did not crash)."""
    if returncode == -signal.SIGILL:
        return f"the build uses CPU instructions this machine does not allow: {REBUILD_HINT}"
    return REBUILD_HINT if is_crash(returncode) else ""


def with_log(message: str, tail: str) -> str:
    """`message: tail`, or the message alone when the child logged nothing."""
    return f"{message}: {tail}" if tail else message


def log_tail(path: str | Path, lines: int = 3, max_bytes: int = 4000) -> str:
    """The last non-empty lines of a child's log, joined on one line."""
    try:
        data = Path(path).read_bytes()[-max_bytes:]
    except OSError:
        return ""
    text = [ln for ln in data.decode(errors="replace").splitlines() if ln.strip()]
    return " | ".join(text[-lines:])


def health_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(proc: subprocess.Popen[bytes], url: str, timeout_s: float) -> str | None:
    """Poll `url/health` until it answers 200. Returns None when healthy, else why not
    ('crashed with signal 4 ...', 'did not become healthy in 120 s')."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return describe_exit(proc.returncode)
        if health_ok(url):
            return None
        time.sleep(0.05)
    return f"did not become healthy in {timeout_s:g} s"


def terminate(proc: subprocess.Popen[bytes] | None, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`; a child already gone is left alone."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace_s)


def wait_exit(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> int | None:
    """The child's return code once it has exited (None if it is still running after `timeout_s`)."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
