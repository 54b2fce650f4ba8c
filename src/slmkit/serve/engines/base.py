"""What every engine offers the gateway: start/stop, state, and a stream of generation events."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from slmkit.serve.engines.request import GenerationRequest

EngineState = Literal["starting", "ready", "restarting", "failed", "stopped"]


@dataclass
class Delta:
    """One step of a generation: new text, and at the end a finish reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. tool_calls deltas, passed through
    logprobs: list[float] = field(
        default_factory=list
    )  # per-token log-probs, when the request asked


class Engine(Protocol):
    """A serving backend for one or more model ids."""

    kind: str
    model_ids: list[str]

    @property
    def state(self) -> EngineState: ...

    @property
    def capacity(self) -> int:
        """Requests decoded at the same time (beyond that they queue inside the engine)."""
        ...

    @property
    def restarts(self) -> int: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> dict[str, Any]: ...

    async def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        """Tokens of the rendered prompt, or None when the engine cannot tell cheaply."""
        ...

    def context_size(self) -> int | None: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """An async generator (`async def` with `yield`) of deltas; raises `EngineError` before
        the first one for anything decided up front, or part-way when generation breaks. The gateway `aclose()`s it to stop the engine's
        work early (deadline, repetition loop, client gone)."""
        ...
