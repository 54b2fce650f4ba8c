"""The board's chat talks to real `slm serve` children: one per model reference, started on first
use on a free loopback port with the board's SLM_HOME and the audit log on (text included), so a
chat answer is logged like any other request and its thumbs up/down go through the gateway's own
`POST /v1/feedback` into the same feedback store that `slm logs feedback` reads."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx

from slmkit.child_process import (
    describe_exit,
    free_port,
    last_error_line,
    log_tail,
    spawn_lasting,
    terminate,
    wait_healthy,
)
from slmkit.errors import SlmError
from slmkit.serve.server import model_entry

START_TIMEOUT_S = 300.0


@dataclass
class ChatSettings:
    """What the chat asks of a model besides the messages."""

    system: str = ""
    temperature: float = 0.7
    max_tokens: int = 256
    seed: int | None = None


@dataclass
class ChatGateway:
    """A running `slm serve REF` child."""

    ref: str
    model_id: str
    url: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class ChatReply:
    """An answer so far: its text, the completion id (the audit log's request id) and token usage."""

    text: str = ""
    id: str = ""
    completion_tokens: int | None = None
    reasoning: str = ""  # a reasoning model's thinking (`reasoning_content`), shown folded


class ChatGateways:
    """Starts, reuses and stops the chat's `slm serve` children (one per model reference)."""

    def __init__(self, log_dir: Path, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.log_dir = log_dir
        self.start_timeout_s = start_timeout_s
        self._gateways: dict[str, ChatGateway] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, ref: str) -> ChatGateway:
        """The running gateway for `ref`, started (and waited for) on first use."""
        ref = ref.strip()
        if not ref:
            raise SlmError("no model chosen", hint="pick or type a model reference, e.g. default")
        with self._lock:
            ref_lock = self._locks.setdefault(ref, threading.Lock())
        with ref_lock:
            running = self._gateways.get(ref)
            if running is not None and running.alive():
                return running
            model_entry(ref)  # an unknown reference fails here, in the CLI's words, at once
            gateway = self._start(ref)
            self._gateways[ref] = gateway
            return gateway

    def _start(self, ref: str) -> ChatGateway:
        port = free_port()
        log_path = self.log_dir / f"serve-{re.sub(r'[^A-Za-z0-9_.-]+', '_', ref)[-60:]}.log"
        cmd = [sys.executable, "-m", "slmkit.cli", "serve", ref, "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--set", "audit.enabled=true", "--set", "audit.log_text=true"]
        with open(log_path, "wb") as log:
            proc = spawn_lasting(cmd, log)
        url = f"http://127.0.0.1:{port}"
        problem = wait_healthy(proc, url, self.start_timeout_s)
        if problem is not None:
            terminate(proc)
            raise SlmError(_failure_line(ref, problem, log_path))
        return ChatGateway(ref, _served_model(url), url, proc, log_path)

    def close(self) -> None:
        """Stop every child (the board is exiting)."""
        for gateway in list(self._gateways.values()):
            terminate(gateway.proc)
        self._gateways.clear()


def _failure_line(ref: str, problem: str, log_path: Path) -> str:
    """The child's own `error: …` line when it printed one, else how it ended and its log tail."""
    error = last_error_line(log_path)
    if error:
        return error.removeprefix("error: ")
    tail = log_tail(log_path)
    return f"`slm serve {ref}` {problem}" + (f": {tail}" if tail else "")


def _served_model(url: str) -> str:
    models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    return str(models[0]["id"])


def stream_reply(
    gateway: ChatGateway, messages: list[dict[str, str]], settings: ChatSettings
) -> Iterator[ChatReply]:
    """Stream one chat answer from the gateway with the official openai client."""
    import openai

    client = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key="board", max_retries=0, timeout=600
    )
    wire = [{"role": "system", "content": settings.system}] if settings.system.strip() else []
    history = [  # the folded thinking is shown, never sent back (as the API's clients do)
        {"role": m["role"], "content": m["content"]} for m in messages if not m.get("metadata")
    ]
    reply = ChatReply()
    try:
        stream = client.chat.completions.create(
            model=gateway.model_id,
            messages=cast(Any, [*wire, *history]),
            temperature=settings.temperature,
            max_tokens=settings.max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            seed=openai.omit if settings.seed is None else settings.seed,
        )
        for chunk in stream:
            reply.id = chunk.id or reply.id
            if chunk.usage is not None:
                reply.completion_tokens = chunk.usage.completion_tokens
            delta = chunk.choices[0].delta if chunk.choices else None
            thinking = getattr(delta, "reasoning_content", None) if delta else None
            if thinking:
                reply.reasoning += thinking
            if delta is not None and delta.content:
                reply.text += delta.content
            if thinking or (delta is not None and delta.content):
                yield reply
    except openai.APIStatusError as exc:
        raise SlmError(f"{gateway.model_id}: {_api_message(exc.body, exc.message)}") from None
    except openai.APIConnectionError:
        state = describe_exit(gateway.proc.poll())
        raise SlmError(
            f"lost the connection to `slm serve {gateway.ref}` (it {state})",
            hint=f"its log: {gateway.log}",
        ) from None
    yield reply


def send_feedback(gateway_url: str, request_id: str, rating: int, correction: str | None) -> None:
    """`POST /v1/feedback` to the gateway that answered: stored beside the request in its audit log."""
    body = {"id": request_id, "rating": rating, "correction": correction or None}
    try:
        response = httpx.post(f"{gateway_url}/v1/feedback", json=body, timeout=30)
    except httpx.HTTPError as exc:
        raise SlmError(f"cannot reach {gateway_url}/v1/feedback: {exc}") from None
    if response.status_code != 200:
        try:
            data: Any = response.json()
        except ValueError:
            data = None
        raise SlmError(f"feedback not stored: {_api_message(data, response.text)}")


def _api_message(body: Any, fallback: str) -> str:
    """The `message` of an OpenAI-shaped error body (the client hands over either level)."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return fallback.splitlines()[0] if fallback else "request failed"
