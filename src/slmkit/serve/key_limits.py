"""Per-key limits of `slm serve`: requests and tokens per minute over a sliding 60 s window and a
token budget per UTC day, answered with 429 (`rate_limit_exceeded`) and `Retry-After`.

When a request is counted (the generation endpoints, chat and completions):
- on admission, before the model is asked, it is one request in its key's rpm window, and its
  prompt tokens (counted by the engine) are reserved, so concurrent requests see them at once;
- it is refused when the key's budget is already spent: `rpm` requests in the last 60 s, or
  tokens in the last 60 s plus reservations >= `tpm`, or tokens today (UTC) plus reservations
  >= `daily_tokens`. An admitted request can end above a limit by its own size; the next waits;
- when it ends (a stream: after its last event, or when the client left) its reservation is
  replaced by its real usage, prompt + completion tokens as in `usage`; a request that failed
  before generating counts no tokens.

Counters live in this process (one gateway replica; the day's usage is re-read from the audit
log when it starts), or, with `state.cache` set, in Valkey/Redis, where every gateway on it counts
against the same windows (`slmkit.state.redis_state.KeyWindows`). When that server cannot be
reached a key with limits is refused with 503 (`state_unavailable`): limits are never skipped.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from slmkit.config import env_secret
from slmkit.console import warn
from slmkit.errors import ConfigError
from slmkit.serve.api_errors import ApiError, key_limit_reached, state_unavailable
from slmkit.serve.audit import key_id
from slmkit.serve.config import ServeConfig
from slmkit.serve.metrics import GatewayMetrics
from slmkit.state.redis_state import KeyWindows, Refusal

WINDOW_S = 60.0
DAY_S = 86_400.0


@dataclass(frozen=True)
class ServedKey:
    """An accepted API key: its value (compared, never shown), its name and its limits."""

    name: str
    value: str = field(repr=False)
    rpm: int | None = None
    tpm: int | None = None
    daily_tokens: int | None = None


def resolve_keys(config: ServeConfig) -> list[ServedKey]:
    """Named `keys` (values from the file or the environment) plus the unnamed `api_keys` and
    `SLM_API_KEYS`, named by their hash; ConfigError for an unset variable or a repeated key."""
    served: list[ServedKey] = []
    named: dict[str, str] = {}  # value -> name
    for i, entry in enumerate(config.keys):
        value = (entry.key or "").strip() or env_secret(
            entry.key_env,
            f"keys.{i}.key_env",
            hint=f"export it before `slm serve` (key {entry.name!r})",
        )
        if not value:
            raise ConfigError(f"keys.{i}: the key is empty")
        if value in named:
            raise ConfigError(
                f"keys.{i}: key {entry.name!r} has the same value as key {named[value]!r}"
            )
        named[value] = entry.name
        served.append(ServedKey(entry.name, value, entry.rpm, entry.tpm, entry.daily_tokens))
    for value in dict.fromkeys(config.all_api_keys()):
        if value in named:
            raise ConfigError(
                f"api_keys: key {named[value]!r} of `keys` is also given unnamed "
                "(api_keys, --api-key or SLM_API_KEYS); list it once"
            )
        served.append(ServedKey(str(key_id(value)), value))
    return served


class SlidingWindow:
    """Amounts added within the last `span_s` seconds: a log of (time, amount), trimmed on read."""

    def __init__(self, span_s: float = WINDOW_S) -> None:
        self.span_s = span_s
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0

    def used(self, now: float) -> int:
        while self.events and self.events[0][0] <= now - self.span_s:
            self.total -= self.events.popleft()[1]
        return self.total

    def add(self, now: float, amount: int) -> None:
        if amount > 0:
            self.events.append((now, amount))
            self.total += amount

    def seconds_until_below(self, limit: int, now: float, pending: int = 0) -> float:
        """Seconds until `used + pending < limit` as old amounts leave (the span if they cannot)."""
        excess = self.used(now) + pending - limit + 1
        for at, amount in self.events:
            excess -= amount
            if excess <= 0:
                return at + self.span_s - now
        return self.span_s


class DailyBudget:
    """Tokens used in the current UTC day (Unix time // 86400)."""

    def __init__(self) -> None:
        self.day = -1
        self.tokens = 0

    def used(self, wall: float) -> int:
        day = int(wall // DAY_S)
        if day != self.day:
            self.day, self.tokens = day, 0
        return self.tokens

    def add(self, wall: float, amount: int) -> None:
        self.tokens = self.used(wall) + amount

    @staticmethod
    def seconds_to_reset(wall: float) -> float:
        return DAY_S - wall % DAY_S


class KeyState:
    """The counters of one key: requests and tokens in the last minute, tokens today, and the
    prompt tokens reserved by its requests in flight."""

    def __init__(self, key: ServedKey) -> None:
        self.key = key
        self.requests = SlidingWindow()
        self.tokens = SlidingWindow()
        self.daily = DailyBudget()
        self.reserved = 0

    @property
    def counts_tokens(self) -> bool:
        return self.key.tpm is not None or self.key.daily_tokens is not None

    @property
    def limits(self) -> tuple[int | None, int | None, int | None]:
        return self.key.rpm, self.key.tpm, self.key.daily_tokens

    def refusal(self, now: float, wall: float) -> Refusal | None:
        """The first limit already reached; None when the request may go on."""
        k = self.key
        if k.rpm is not None and (used := self.requests.used(now)) >= k.rpm:
            return Refusal("rpm", used, self.requests.seconds_until_below(k.rpm, now))
        if k.tpm is not None and (used := self.tokens.used(now) + self.reserved) >= k.tpm:
            wait = self.tokens.seconds_until_below(k.tpm, now, self.reserved)
            return Refusal("tpm", used, wait)
        if k.daily_tokens is not None and (
            (used := self.daily.used(wall) + self.reserved) >= k.daily_tokens
        ):
            return Refusal("daily_tokens", used, self.daily.seconds_to_reset(wall))
        return None

    def answer(self, refusal: Refusal) -> ApiError:
        """The 429 of a reached limit."""
        what = {
            "rpm": ("requests per minute (RPM)", "requests", self.key.rpm),
            "tpm": ("tokens per minute (TPM)", "tokens", self.key.tpm),
            "daily_tokens": (
                "tokens per day (TPD, resets at 00:00 UTC)",
                "tokens",
                self.key.daily_tokens,
            ),
        }
        limit, unit, allowed = what[refusal.limit]
        wait = _whole(refusal.wait_s)
        return key_limit_reached(self.key.name, limit, unit, allowed or 0, refusal.used, wait)


def _whole(seconds: float) -> int:
    """Retry-After in whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds))


@dataclass
class KeyTicket:
    """An admitted request's claim on its key: prompt tokens reserved until its usage is known."""

    state: KeyState
    reserved: int
    settled: bool = False
    id: str = ""  # its id in the shared windows


class KeyLimits:
    """The accepted keys with their limits and usage counters."""

    def __init__(
        self,
        keys: list[ServedKey],
        metrics: GatewayMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        shared: KeyWindows | None = None,
        hold_s: float = 180.0,
    ) -> None:
        self.names_by_value = {k.value: k.name for k in keys}
        self.states = {k.name: KeyState(k) for k in keys}
        self.metrics = metrics
        self.clock = clock
        self.wall_clock = wall_clock
        self.shared = shared  # the windows every gateway shares, else this process's counters
        self.hold_s = hold_s  # how long a shared reservation outlives a gateway that died
        self._settling: set[asyncio.Task[None]] = set()
        for name in self.states:  # every key has its series from the start
            metrics.key_requests.labels(name)

    @classmethod
    def from_config(
        cls, config: ServeConfig, metrics: GatewayMetrics, cache_client: Any = None
    ) -> KeyLimits:
        shared = KeyWindows(cache_client) if cache_client is not None else None
        hold_s = config.limits.request_timeout_s + 60
        return cls(resolve_keys(config), metrics, shared=shared, hold_s=hold_s)

    async def admit(
        self, name: str | None, count_prompt: Callable[[], Awaitable[int | None]], estimate: int
    ) -> KeyTicket | None:
        """Count one request against its key; ApiError 429 when a limit is already reached.
        `count_prompt` is only awaited for keys with token limits (`estimate` if it gives None)."""
        state = self.states.get(name) if name is not None else None
        if state is None:
            return None
        ticket = KeyTicket(state, 0, id=uuid.uuid4().hex)
        if self.shared is None:  # before counting: a limited key costs no tokenizing (on the
            await self._refuse_if_limited(ticket)  # shared windows one atomic call does it all)
        if state.counts_tokens:
            ticket.reserved = await count_prompt() or estimate
        await self._refuse_if_limited(ticket, take=True)  # others may have been admitted meanwhile
        self.metrics.key_requests.labels(state.key.name).inc()
        return ticket

    async def _refuse_if_limited(self, ticket: KeyTicket, take: bool = False) -> None:
        """429 when the key's limit is reached; else, with `take`, count the request and hold its
        reserved tokens (in one atomic step on the shared windows)."""
        state = ticket.state
        if self.shared is None:
            refusal = state.refusal(self.clock(), self.wall_clock())
            if refusal is None and take:
                state.requests.add(self.clock(), 1)
                state.reserved += ticket.reserved
        else:
            try:
                refusal = await self.shared.admit(
                    state.key.name, state.limits, ticket.reserved, ticket.id, self.hold_s, take
                )
            except Exception as exc:  # the server is down: refuse rather than skip the limits
                raise state_unavailable(exc) from exc
        if refusal is not None:
            self.metrics.key_rejections.labels(state.key.name, refusal.limit).inc()
            raise state.answer(refusal)

    def settle(
        self, ticket: KeyTicket | None, prompt_tokens: int | None, completion_tokens: int
    ) -> None:
        """Replace a request's reservation by its real usage (once); `prompt_tokens` None = the
        engine never said (a stream cut short), the reservation stands in for it."""
        if ticket is None or ticket.settled:
            return
        ticket.settled = True
        state = ticket.state
        prompt = ticket.reserved if prompt_tokens is None else prompt_tokens
        total = prompt + completion_tokens
        if self.shared is None:
            state.reserved -= ticket.reserved
            state.tokens.add(self.clock(), total)
            state.daily.add(self.wall_clock(), total)
        else:  # written in the background: the request is over, nothing waits on it
            task = asyncio.get_running_loop().create_task(
                self.shared.settle(state.key.name, ticket.id, total)
            )
            self._settling.add(task)
            task.add_done_callback(self._settled)
        name = state.key.name
        self.metrics.key_tokens.labels(name, "prompt").inc(prompt)
        self.metrics.key_tokens.labels(name, "completion").inc(completion_tokens)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        if not task.cancelled() and task.exception() is not None:  # it lapses after `hold_s`
            warn(f"per-key limits: a request's usage was not recorded ({task.exception()})")

    async def drain(self) -> None:
        """Wait for the usage still being written to the shared windows."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    def seed_daily(self, tokens_by_name: dict[str, int]) -> None:
        """Today's usage so far (from the audit log) after a restart (the shared windows keep
        their own: nothing to seed there)."""
        if self.shared is not None:
            return
        wall = self.wall_clock()
        for name, tokens in tokens_by_name.items():
            if name in self.states:
                self.states[name].daily.add(wall, tokens)
