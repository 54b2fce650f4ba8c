"""A short-lived `llama-server` for one GGUF: greedy answers, the rendered prompt and tokenization.

Export uses it to answer the eval prompts at temperature 0 with the GGUF's own embedded chat
template (`--jinja`), exactly as a deployment would.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from slmkit.export.errors import ExportError
from slmkit.tools import default_threads, llama_tool

START_TIMEOUT_S = 120.0


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the Python process dies, so it is never orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_args(
    gguf: Path, *, port: int, ctx: int = 2048, threads: int = 2, host: str = "127.0.0.1"
) -> list[str]:
    """The llama-server flags export uses and writes into the export folder (one template: the GGUF's)."""
    return [
        "-m",
        str(gguf),
        "--host",
        host,
        "--port",
        str(port),
        "-c",
        str(ctx),
        "-t",
        str(threads),
        "-np",
        "1",
        "--jinja",
        "--no-webui",
    ]


class LlamaServerProcess:
    """`with LlamaServerProcess(gguf) as server: server.chat(messages)`; terminate -> kill on exit."""

    def __init__(self, gguf: Path, *, ctx: int = 2048, threads: int | None = None) -> None:
        self.gguf = gguf
        self.port = free_port()
        threads = threads or default_threads()  # see ExportConfig.threads
        self.args = server_args(gguf, port=self.port, ctx=ctx, threads=threads)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.client = httpx.Client(base_url=self.url, timeout=300.0)

    def __enter__(self) -> LlamaServerProcess:
        self.proc = subprocess.Popen(
            [str(llama_tool("llama-server")), *self.args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ExportError(
                    f"llama-server exited ({self.proc.returncode}) loading {self.gguf}: {self.log_tail()}"
                )
            try:
                if self.client.get("/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.close()
        raise ExportError(
            f"llama-server did not become healthy in {START_TIMEOUT_S:.0f}s for {self.gguf}"
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    def log_tail(self, lines: int = 3) -> str:
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post(path, json=body)
        if response.status_code != 200:
            raise ExportError(
                f"llama-server {path} answered {response.status_code}: {response.text[:200]}"
            )
        data: dict[str, Any] = response.json()
        return data

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int = 64, seed: int = 0) -> str:
        """The temperature-0 answer to `messages`, rendered with the GGUF's chat template."""
        data = self._post(
            "/v1/chat/completions",
            {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "seed": seed},
        )
        return str(data["choices"][0]["message"].get("content") or "").strip()

    def apply_template(self, messages: list[dict[str, str]]) -> str:
        """The prompt text llama-server builds for `messages` (generation prompt included)."""
        return str(self._post("/apply-template", {"messages": messages})["prompt"])

    def tokenize(self, text: str) -> list[int]:
        tokens = self._post(
            "/tokenize", {"content": text, "add_special": False, "parse_special": True}
        )["tokens"]
        return [int(t) for t in tokens]
