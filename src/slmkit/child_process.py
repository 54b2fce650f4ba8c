"""One way to run a server child process (llama-server, vllm serve): free loopback port, spawn
that dies with its parent, `/health` wait that notices a dead child, terminate -> kill, and a
one-line account of how a child ended (signal 4 is a build that uses instructions this CPU refuses).

Used by export's short-lived `LlamaServerProcess`, the gateway's supervised engines and the
decode check of set-up and `slm doctor`.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
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


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when its parent dies (even by SIGKILL), so it is never orphaned."""
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
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


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
