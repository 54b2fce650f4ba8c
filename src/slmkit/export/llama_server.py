"""A short-lived `llama-server` for one GGUF: greedy answers, the rendered prompt and tokenization.

Export uses it to answer the eval prompts at temperature 0 with the GGUF's own embedded chat
template (`--jinja`), exactly as a deployment would.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from slmkit import child_process
from slmkit.child_process import free_port
from slmkit.export.errors import ExportError
from slmkit.tools import default_threads, llama_tool

START_TIMEOUT_S = 120.0
__all__ = ["DecodeCheck", "LlamaServerProcess", "decode_check", "free_port", "server_args"]


def template_kwargs(gguf: Path) -> dict[str, Any]:
    """What llama-server must pass to the GGUF's chat template so that it renders what training
    rendered (transformers' defaults; see `default_template_kwargs`)."""
    from slmkit.export.gguf_file import read_metadata
    from slmkit.models.templates import default_template_kwargs

    if not gguf.is_file():
        return {}
    template = read_metadata(gguf).get("tokenizer.chat_template")
    return default_template_kwargs(template) if isinstance(template, str) else {}


def template_args(kwargs: dict[str, Any]) -> list[str]:
    return ["--chat-template-kwargs", json.dumps(kwargs)] if kwargs else []


def server_args(
    gguf: Path,
    *,
    port: int,
    ctx: int = 2048,
    threads: int = 2,
    host: str = "127.0.0.1",
    kwargs: dict[str, Any] | None = None,
) -> list[str]:
    """The llama-server flags export uses and writes into the export folder (one template: the
    GGUF's, given `kwargs`: see `template_kwargs`)."""
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
        *template_args(kwargs or {}),
        "--no-webui",
    ]


class LlamaServerProcess:
    """`with LlamaServerProcess(gguf) as server: server.chat(messages)`; terminate -> kill on exit."""

    def __init__(
        self,
        gguf: Path,
        *,
        ctx: int = 2048,
        threads: int | None = None,
        binary: Path | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.gguf = gguf
        self.binary = binary or llama_tool("llama-server")
        self.port = free_port()
        threads = threads or default_threads()  # see ExportConfig.threads
        self.args = server_args(
            gguf, port=self.port, ctx=ctx, threads=threads, kwargs=template_kwargs(gguf)
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in close()
            prefix="slm-llama-server-", suffix=".log"
        )
        self.client = httpx.Client(base_url=self.url, timeout=300.0)

    def __enter__(self) -> LlamaServerProcess:
        self.proc = child_process.spawn([str(self.binary), *self.args], self._log)
        why = child_process.wait_healthy(self.proc, self.url, self.start_timeout_s)
        if why is not None:
            code = self.proc.poll()
            self.close()
            hint = child_process.crash_hint(code)
            raise ExportError(
                child_process.with_log(f"llama-server {why} loading {self.gguf}", self.log_tail()),
                hint=hint or None,
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()
        child_process.terminate(self.proc)
        self._log.close()

    def log_tail(self, lines: int = 3) -> str:
        return child_process.log_tail(self._log.name, lines)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to one of llama-server's endpoints; an answer other than 200 is an ExportError."""
        response = self.client.post(path, json=body)
        if response.status_code != 200:
            raise ExportError(
                f"llama-server {path} answered {response.status_code}: {response.text[:200]}"
            )
        data: dict[str, Any] = response.json()
        return data

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int = 64, seed: int = 0) -> str:
        """The temperature-0 answer to `messages`, rendered with the GGUF's chat template."""
        data = self.post(
            "/v1/chat/completions",
            {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "seed": seed},
        )
        return str(data["choices"][0]["message"].get("content") or "").strip()

    def apply_template(self, messages: list[dict[str, str]]) -> str:
        """The prompt text llama-server builds for `messages` (generation prompt included)."""
        return str(self.post("/apply-template", {"messages": messages})["prompt"])

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """Token ids of `text`; `add_special` adds what the GGUF says to add (BOS), as a chat
        request's prompt gets it."""
        tokens = self.post(
            "/tokenize", {"content": text, "add_special": add_special, "parse_special": True}
        )["tokens"]
        return [int(t) for t in tokens]


@dataclass
class DecodeCheck:
    """Whether a llama-server build loads a GGUF and decodes, and how fast."""

    ok: bool
    detail: str  # "decoded 16 tokens (112 tok/s)" or "crashed with signal 4 (SIGILL: ...)"
    returncode: int | None = None
    tokens_per_s: float | None = None
    hint: str = ""


def decode_check(
    gguf: Path, *, binary: Path | None = None, tokens: int = 16, timeout_s: float = 120.0
) -> DecodeCheck:
    """Start llama-server on `gguf`, decode `tokens` tokens greedily, and report how it ended.

    `--version` works even from a build whose matmul kernels the CPU refuses (AMX on a VM that
    advertises it without allowing it): only a real decode runs those kernels."""
    server = LlamaServerProcess(gguf, ctx=512, binary=binary, start_timeout_s=timeout_s)
    try:
        with server:
            return _decode(server, tokens)
    except ExportError as exc:  # it did not start, or answered with an error
        code = server.proc.returncode if server.proc is not None else None
        return DecodeCheck(False, exc.message, code, hint=child_process.crash_hint(code))


def _decode(server: LlamaServerProcess, tokens: int) -> DecodeCheck:
    body = {"prompt": "The capital of France is", "n_predict": tokens, "temperature": 0}
    try:
        timings = server.post("/completion", body).get("timings", {})
    except httpx.HTTPError as exc:  # the connection broke: see whether the server died with it
        code = child_process.wait_exit(server.proc) if server.proc is not None else None
        if code is None:
            return DecodeCheck(False, f"did not answer the decode request ({type(exc).__name__})")
        detail = f"{child_process.describe_exit(code)} on its first decode"
        return DecodeCheck(False, detail, code, hint=child_process.crash_hint(code))
    speed = float(timings.get("predicted_per_second") or 0.0)
    n = int(timings.get("predicted_n") or 0)
    if n < 1:
        return DecodeCheck(False, "answered without decoding a token")
    return DecodeCheck(True, f"decoded {n} tokens ({speed:.0f} tok/s)", 0, speed)
