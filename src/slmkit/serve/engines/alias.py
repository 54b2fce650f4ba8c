"""`AliasEngine`: a served model id that follows a registry alias (`ref: "@support"`).

It polls the registry every `reload_s`. When the alias has moved, it builds and starts the new
version's engine, sends new requests there, and stops the old engine only once the requests it
was answering have finished, so no request is dropped. A new version that fails to start is
reported and skipped; the old one keeps serving. Every request carries the version that answered
(`request.version`, the audit log's `version` column).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from slmkit.console import info, warn
from slmkit.registry.store import Registry, Version
from slmkit.serve.engines.base import Delta, Engine, EngineState
from slmkit.serve.engines.errors import engine_unavailable
from slmkit.serve.engines.group import RestartHookGroup, pass_on_restart_hook, stop_members
from slmkit.serve.engines.request import GenerationRequest

EngineFactory = Callable[[Version], Engine]


@dataclass
class Serving:
    """One version's engine and the requests it is answering."""

    version: str
    engine: Engine
    in_flight: int = 0
    drained: asyncio.Event | None = None  # set when a retired engine has no request left


class AliasEngine(RestartHookGroup):
    """An `Engine` that serves whatever version a registry alias points at, and follows it."""

    kind = "alias"

    def __init__(
        self,
        model_id: str,
        alias: str,
        build: EngineFactory,
        *,
        registry: Registry | None = None,
        reload_s: float = 5.0,
        retire_after_s: float = 600.0,
    ) -> None:
        self.model_ids = [model_id]
        self.model_id = model_id
        self.alias = alias.removeprefix("@")
        self.build = build
        self.registry = registry or Registry()
        self.reload_s = reload_s
        self.retire_after_s = retire_after_s  # a retired version's requests get this long to end
        self.current: Serving | None = None
        self.retired: list[Serving] = []
        self.skipped: str | None = None  # a version that failed to start: not retried until moved
        self._restarts_before = 0  # restarts of engines already stopped
        self._poller: asyncio.Task[None] | None = None
        self._gauge: Any = None  # slm_alias_version_info, once metrics attach
        self._tasks: set[asyncio.Task[None]] = set()  # retirements under way

    # -- what the gateway reads ---------------------------------------------------------------
    @property
    def version(self) -> str | None:
        return self.current.version if self.current else None

    @property
    def state(self) -> EngineState:
        return self.current.engine.state if self.current else "starting"

    @property
    def capacity(self) -> int:
        return self.current.engine.capacity if self.current else 1

    @property
    def restarts(self) -> int:
        engines = [s.engine for s in [*self.retired, *([self.current] if self.current else [])]]
        return self._restarts_before + sum(e.restarts for e in engines)

    def hooked_members(self) -> list[Engine]:
        return [self.current.engine] if self.current else []

    def attach_metrics(self, metrics: Any) -> None:
        self._gauge = metrics.alias_version
        self._show_version(None)

    def context_size(self) -> int | None:
        return self.current.engine.context_size() if self.current else None

    async def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        return await self.current.engine.count_prompt_tokens(request) if self.current else None

    async def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {"state": self.state}
        if self.current is not None:
            report = await self.current.engine.health()
            report["serving_engine"] = self.current.engine.kind
        report.update(
            id=self.model_id,
            engine=self.kind,
            alias=self.alias,
            version=self.version,
            state=self.state,
            draining=[s.version for s in self.retired],
        )
        if self.skipped:
            report["skipped_version"] = self.skipped
        return report

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        version = await asyncio.to_thread(self.registry.resolve, self.alias)
        self.current = await self._start_version(version)
        self._show_version(None)
        info(f"{self.model_id}: serving @{self.alias} = {version.id} ({version.path})")
        self._poller = asyncio.create_task(self._poll(), name=f"alias-{self.model_id}")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        servings = [*self.retired, *([self.current] if self.current else [])]
        try:
            await stop_members(s.engine for s in servings)
        finally:
            self.registry.close()  # its connections (a pool, on PostgreSQL): reopened on use

    async def _start_version(self, version: Version) -> Serving:
        engine = await asyncio.to_thread(self.build, version)
        pass_on_restart_hook([engine], self._on_restart)
        await engine.start()
        return Serving(version.id, engine)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.reload_s)
            try:
                await self.reload()
            except Exception as exc:  # a bad registry read must not stop the polling
                warn(f"{self.model_id}: alias @{self.alias} not reloaded ({exc})")

    async def reload(self) -> bool:
        """Follow the alias once; True when a new version took over."""
        target = await asyncio.to_thread(self.registry.alias_target, self.alias)
        if target is None or target == self.version or target == self.skipped:
            return False
        version = await asyncio.to_thread(self.registry.get, target)
        info(f"{self.model_id}: @{self.alias} moved to {target}; starting it")
        try:
            fresh = await self._start_version(version)
        except Exception as exc:
            self.skipped = target
            warn(
                f"{self.model_id}: version {target} did not start ({exc}); still serving {self.version}"
            )
            return False
        old, self.current, self.skipped = self.current, fresh, None
        self._show_version(old.version if old else None)
        if old is not None:
            task = asyncio.create_task(self._retire(old), name=f"retire-{old.version}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        info(f"{self.model_id}: now serving {target}")
        return True

    async def _retire(self, old: Serving) -> None:
        """Stop the old engine once the requests it is answering have finished (or, when one
        hangs, after `retire_after_s`: the request timeout has long passed by then)."""
        self.retired.append(old)
        old.drained = asyncio.Event()
        if old.in_flight == 0:
            old.drained.set()
        try:
            await asyncio.wait_for(old.drained.wait(), self.retire_after_s)
        except asyncio.TimeoutError:
            warn(
                f"{self.model_id}: {old.in_flight} request(s) on {old.version} still running after "
                f"{self.retire_after_s:g} s; stopping it anyway"
            )
        self._restarts_before += old.engine.restarts
        await old.engine.stop()
        self.retired.remove(old)
        info(f"{self.model_id}: stopped {old.version} (its requests finished)")

    def _show_version(self, previous: str | None) -> None:
        if self._gauge is None or self.current is None:
            return
        if previous is not None:
            with contextlib.suppress(KeyError):
                self._gauge.remove(self.model_id, previous)
        self._gauge.labels(self.model_id, self.current.version).set(1)

    # -- generation ---------------------------------------------------------------------------
    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        serving = self.current
        if serving is None:
            raise engine_unavailable(self.model_id, "the alias has no version started yet")
        request.version = serving.version
        serving.in_flight += 1
        events = serving.engine.generate(request)
        try:
            async for delta in events:
                yield delta
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()
            serving.in_flight -= 1
            if serving.in_flight == 0 and serving.drained is not None:
                serving.drained.set()
