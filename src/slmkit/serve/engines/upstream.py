"""A supervised OpenAI-compatible server subprocess (llama-server, vllm serve) behind the gateway.

The child listens on a private loopback port. A supervisor task notices when it dies and
restarts it (requests meanwhile get 503 + Retry-After); shutdown is terminate, then kill. The
OpenAI HTTP part (payloads, SSE, errors) is `openai_http.py`, shared with `RemoteEngine`.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from slmkit.serve.engines.base import Delta, EngineState
from slmkit.serve.engines.errors import EngineError, engine_unavailable, invalid_request
from slmkit.serve.engines.openai_http import (
    OpenAIHttp,
    build_payload,
    context_overflow,
    error_fields,
)
from slmkit.serve.engines.request import GenerationRequest

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
        self.label = f"engine {model_id!r}"  # in log lines; a ReplicaPool adds the replica
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
        self.http = OpenAIHttp(self.url, timeout=httpx.Timeout(None, connect=5.0))
        self.client = self.http.client  # subclasses also call the child's own endpoints

    # -- subclass hooks -------------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    async def read_context_size(self) -> int | None:
        return None

    def upstream_payload(self, request: GenerationRequest) -> dict[str, Any]:
        return build_payload(request, self.model_id)

    def map_upstream_error(self, status: int, body: dict[str, Any]) -> EngineError:
        message, err = error_fields(body)
        overflow = context_overflow(status, err, message, self._n_ctx)
        if overflow is not None:
            return overflow
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
                warn(f"{self.label} {how} and reached max_restarts; staying down")
                return
            self._state = "restarting"
            self._restarts += 1
            warn(f"{self.label} {how}; restarting (restart {self._restarts})")
            if self.on_restart is not None:
                self.on_restart(self.model_id)
            try:
                await self._spawn_and_wait()
            except ServeError as exc:
                warn(str(exc))
                await asyncio.sleep(min(2.0 * self._restarts, 30.0))
                continue
            self._state = "ready"
            info(f"{self.label} is back")

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._terminate()
        await self.http.aclose()
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
        events = self.http.stream(
            request,
            self.upstream_payload(request),
            on_error=self.map_upstream_error,
            on_failure=self._connection_failed,
            may_retry=lambda _exc: self.alive(),
        )
        async with contextlib.aclosing(events):
            async for delta in events:
                yield delta

    def _connection_failed(self, exc: Exception) -> EngineError:
        return engine_unavailable(
            self.model_id, f"connection to the engine failed: {type(exc).__name__}"
        )
