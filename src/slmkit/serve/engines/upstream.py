"""A supervised OpenAI-compatible server subprocess (llama-server, vllm serve) behind the gateway.

The child listens on a private loopback port. A supervisor task notices when it dies and
restarts it (requests meanwhile get 503 + Retry-After); shutdown is terminate, then kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import tempfile
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import httpx

from slmkit import child_process
from slmkit.child_process import free_port
from slmkit.console import info, warn
from slmkit.errors import ServeError
from slmkit.serve.api_errors import (
    ApiError,
    context_length_exceeded,
    engine_unavailable,
    invalid_request,
)
from slmkit.serve.engines.base import Delta, EngineState
from slmkit.serve.protocol import GenerationRequest

__all__ = ["UpstreamEngine", "free_port"]


class UpstreamEngine:
    """Base of engines that run an OpenAI-compatible server as a child process."""

    kind = "upstream"

    def __init__(
        self,
        model_id: str,
        *,
        start_timeout_s: float,
        health_interval_s: float = 0.5,
        max_restarts: int = 20,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self.model_ids = [model_id]
        self.model_id = model_id
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout_s = start_timeout_s
        self.health_interval_s = health_interval_s
        self.max_restarts = max_restarts
        self.on_restart = on_restart
        self.proc: subprocess.Popen[bytes] | None = None
        self._state: EngineState = "stopped"
        self._restarts = 0
        self._n_ctx: int | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix=f"slm-{model_id}-", suffix=".log", delete=False
        )
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
        self.client = httpx.AsyncClient(
            base_url=self.url, timeout=httpx.Timeout(None, connect=5.0), limits=limits
        )

    # -- subclass hooks -------------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    async def read_context_size(self) -> int | None:
        return None

    def upstream_payload(self, request: GenerationRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model_id,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": request.max_tokens,
        }
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
            value = getattr(request, name)
            if value is not None:
                payload[name] = value
        if request.seed is not None:
            payload["seed"] = (
                request.seed % 4_294_967_295
            )  # engines take a uint32 seed (-1 = random)
        if request.stop:
            payload["stop"] = request.stop
        if request.messages is not None:
            payload["messages"] = request.messages
        else:
            payload["prompt"] = request.prompt
        payload.update(request.passthrough)
        return payload

    def map_upstream_error(self, status: int, body: dict[str, Any]) -> ApiError:
        nested = body.get("error")
        err: dict[str, Any] = nested if isinstance(nested, dict) else body
        message = str(err.get("message") or err or "engine error")
        if err.get("type") == "exceed_context_size_error" or (
            "context" in message.lower() and status == 400
        ):
            return context_length_exceeded(
                int(err.get("n_prompt_tokens") or 0), int(err.get("n_ctx") or self._n_ctx or 0)
            )
        if status in (400, 404, 422) or (status == 500 and self.alive()):
            # The child rejected what the client sent (bad schema, template error): a client error.
            return invalid_request(
                f"the engine rejected the request: {message}", code="engine_rejected_request"
            )
        return engine_unavailable(self.model_id, f"engine answered {status}")

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def restarts(self) -> int:
        return self._restarts

    @property
    def capacity(self) -> int:
        return 1

    def context_size(self) -> int | None:
        return self._n_ctx

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self) -> None:
        self._state = "starting"
        await self._spawn_and_wait()
        await self.warm_up()
        self._n_ctx = await self.read_context_size()
        self._state = "ready"
        self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise-{self.model_id}")

    async def warm_up(self) -> None:
        """Subclass hook: exercise the engine once after it is healthy (a crash shows here, not at
        the first user request)."""

    async def _spawn_and_wait(self) -> None:
        self._log.truncate(0)
        self._log.seek(0)
        cmd = self.command()
        self.proc = child_process.spawn(cmd, self._log)
        why = await asyncio.to_thread(
            child_process.wait_healthy, self.proc, self.url, self.start_timeout_s
        )
        if why is None:
            return
        code = self.proc.poll()
        await self._terminate()
        raise ServeError(
            child_process.with_log(
                f"{Path(cmd[0]).name} for model {self.model_id!r} {why} while starting",
                self.log_tail(),
            ),
            hint=child_process.crash_hint(code) or None,
        )

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            if self.alive():
                continue
            how = child_process.describe_exit(self.proc.returncode if self.proc else None)
            if self._restarts >= self.max_restarts:
                self._state = "failed"
                warn(f"engine {self.model_id!r} {how} and reached max_restarts; staying down")
                return
            self._state = "restarting"
            self._restarts += 1
            warn(f"engine {self.model_id!r} {how}; restarting (restart {self._restarts})")
            if self.on_restart is not None:
                self.on_restart(self.model_id)
            try:
                await self._spawn_and_wait()
            except ServeError as exc:
                warn(str(exc))
                await asyncio.sleep(min(2.0 * self._restarts, 30.0))
                continue
            self._state = "ready"
            info(f"engine {self.model_id!r} is back")

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._terminate()
        await self.client.aclose()
        self._state = "stopped"
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    async def _terminate(self) -> None:
        await asyncio.to_thread(child_process.terminate, self.proc)

    def log_tail(self) -> str:
        return child_process.log_tail(self._log.name)

    async def health(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "engine": self.kind,
            "state": self._state,
            "restarts": self._restarts,
            "n_ctx": self._n_ctx,
        }

    async def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        return None

    # -- generation -------------------------------------------------------------------------
    def _require_ready(self) -> None:
        if self._state != "ready" or not self.alive():
            raise engine_unavailable(
                self.model_id, self._state if self._state != "ready" else "restarting"
            )

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        self._require_ready()
        path = "/v1/chat/completions" if request.messages is not None else "/v1/completions"
        payload = self.upstream_payload(request)
        for attempt in (1, 2):
            answered = False
            try:
                async with self.client.stream("POST", path, json=payload) as response:
                    answered = True
                    if response.status_code != 200:
                        raw = await response.aread()
                        raise self.map_upstream_error(response.status_code, _json_or_text(raw))
                    async for delta in _parse_sse(response, request.messages is not None):
                        yield delta
                return
            except (httpx.TransportError, httpx.StreamError) as exc:
                # A pooled keep-alive connection the child closed at the same moment fails before any
                # response: nothing was generated, so one retry on a fresh connection is safe.
                if attempt == 1 and not answered and self.alive():
                    continue
                raise engine_unavailable(
                    self.model_id, f"connection to the engine failed: {type(exc).__name__}"
                ) from exc


def _json_or_text(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        return {"message": raw.decode(errors="replace")[:500]}
    return data if isinstance(data, dict) else {"message": str(data)}


async def _parse_sse(response: httpx.Response, chat: bool) -> AsyncGenerator[Delta, None]:
    """OpenAI SSE chunks from the child -> Deltas (usage arrives in the last chunk)."""
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue  # blank separators and ": ping" comments
        data = line[6:]
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if "error" in chunk:
            err = chunk["error"]
            raise ApiError(
                400 if err.get("code") == 400 else 503,
                str(err.get("message", "engine error")),
                type_="server_error",
                code="engine_error",
            )
        usage = chunk.get("usage")
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta", {}) if chat else {"content": choice.get("text", "")}
            extra = {
                k: v for k, v in delta.items() if k not in ("content", "role") and v is not None
            }
            yield Delta(
                text=delta.get("content") or "",
                finish_reason=choice.get("finish_reason"),
                extra=extra,
            )
        if usage:
            yield Delta(
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
            )
