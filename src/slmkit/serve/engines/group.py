"""What engines made of other engines (replica pools, A/B splits, registry aliases) share: the
state they report and the restart hook they pass on to their members."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from slmkit.serve.engines.base import Engine, EngineState

# best first: a group is as ready as its readiest member
STATE_ORDER: tuple[EngineState, ...] = ("ready", "restarting", "starting", "failed", "stopped")


def group_state(members: Iterable[Engine]) -> EngineState:
    """The state of a group: its best member's (ready while any member is)."""
    states = {engine.state for engine in members}
    return next((s for s in STATE_ORDER if s in states), "stopped")


def pass_on_restart_hook(members: Iterable[Engine], hook: Callable[[str], None] | None) -> None:
    """Give the gateway's restart hook to the members that report restarts."""
    for engine in members:
        if hasattr(engine, "on_restart"):
            engine.on_restart = hook  # type: ignore[attr-defined]


async def start_members(members: list[Engine]) -> None:
    """Start every member at once; if any fails, stop them all and raise its error."""
    results = await asyncio.gather(*(e.start() for e in members), return_exceptions=True)
    failed = [x for x in results if isinstance(x, BaseException)]
    if failed:
        await stop_members(members)
        raise failed[0]


async def stop_members(members: Iterable[Engine]) -> None:
    """Stop every member at once; one that fails to stop does not keep the others running."""
    await asyncio.gather(*(e.stop() for e in members), return_exceptions=True)


class RestartHookGroup:
    """The gateway's restart hook on a group: kept, and passed on to the members it names."""

    _on_restart: Callable[[str], None] | None = None

    def hooked_members(self) -> Iterable[Engine]:
        raise NotImplementedError

    @property
    def on_restart(self) -> Callable[[str], None] | None:
        return self._on_restart

    @on_restart.setter
    def on_restart(self, hook: Callable[[str], None] | None) -> None:
        self._on_restart = hook
        pass_on_restart_hook(self.hooked_members(), hook)
