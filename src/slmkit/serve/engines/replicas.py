"""`ReplicaPool`: one model id answered by several engines (local llama-server children and/or
remote endpoints), itself an `Engine`, so the gateway keeps one engine per model id.

Each request goes to one replica chosen by the strategy: `least-busy` (fewest requests in flight),
`round-robin`, or `latency` (lowest moving average of time to first token); ties go round-robin.
A replica that fails `allowed_fails` times in a row (a 5xx or 429 before or during its answer) is
left out for `cooldown_s`; a failure before the first token is retried on another replica
(`retries`). When every ready replica is cooled, the one whose cooldown ends first is tried rather
than failing the request.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from slmkit.console import warn
from slmkit.serve.engines.base import Delta, Engine, EngineState
from slmkit.serve.engines.errors import EngineError, engine_unavailable
from slmkit.serve.engines.group import (
    RestartHookGroup,
    group_state,
    start_members,
    stop_members,
)
from slmkit.serve.engines.request import GenerationRequest

LATENCY_WEIGHT = 0.3  # weight of the newest sample in the moving average of time to first token


@dataclass
class Replica:
    """One engine of a pool and what the balancer knows about it."""

    name: str  # label in /metrics, /health and the audit log, e.g. `llamacpp-0`
    engine: Engine
    index: int = 0
    in_flight: int = 0
    fails: int = 0  # consecutive failures
    cooled_until: float = 0.0  # clock time before which the replica is left out
    latency_s: float | None = None  # moving average of time to first token

    def observe_latency(self, seconds: float) -> None:
        if self.latency_s is None:
            self.latency_s = seconds
        else:
            self.latency_s += LATENCY_WEIGHT * (seconds - self.latency_s)


class ReplicaPool(RestartHookGroup):
    """Load-balances one model id over replicas, with cooldown of failing ones and retries."""

    kind = "replicas"

    def __init__(
        self,
        model_id: str,
        engines: list[tuple[str, Engine]],
        *,
        strategy: str = "least-busy",
        cooldown_s: float = 30.0,
        allowed_fails: int = 3,
        retries: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model_ids = [model_id]
        self.model_id = model_id
        self.replicas = [Replica(name, engine, i) for i, (name, engine) in enumerate(engines)]
        for name, engine in engines:
            if hasattr(engine, "label"):  # child engines name their replica in log lines
                engine.label = f"engine {model_id!r} (replica {name})"  # type: ignore[attr-defined]
        self.strategy = strategy
        self.cooldown_s = cooldown_s
        self.allowed_fails = allowed_fails
        self.retries = retries
        self.clock = clock
        self._last = -1  # index of the replica picked last
        self._requests: Any = None  # slm_replica_requests, once metrics attach

    # -- the Engine protocol ------------------------------------------------------------------
    @property
    def state(self) -> EngineState:
        """Ready while any replica is; else the most hopeful state among them."""
        return group_state(r.engine for r in self.replicas)

    @property
    def capacity(self) -> int:
        ready = [r.engine.capacity for r in self.replicas if r.engine.state == "ready"]
        return sum(ready) or 1

    @property
    def restarts(self) -> int:
        return sum(r.engine.restarts for r in self.replicas)

    def hooked_members(self) -> list[Engine]:
        return [r.engine for r in self.replicas]

    def attach_metrics(self, metrics: Any) -> None:
        """Per-replica series: requests by outcome, in flight, up (ready and not cooled).
        `metrics`: the gateway's, with `replica_requests`, `replica_in_flight`, `replica_up`."""
        self._requests = metrics.replica_requests
        for replica in self.replicas:
            labels = (self.model_id, replica.name)
            metrics.replica_in_flight.labels(*labels).set_function(self._in_flight_of(replica))
            metrics.replica_up.labels(*labels).set_function(self._up_of(replica))
            attach = getattr(replica.engine, "attach_metrics", None)
            if attach is not None:
                attach(metrics)

    def _in_flight_of(self, replica: Replica) -> Callable[[], float]:
        return lambda: float(replica.in_flight)

    def _up_of(self, replica: Replica) -> Callable[[], float]:
        return lambda: 1.0 if self.is_up(replica) else 0.0

    async def start(self) -> None:
        await start_members([r.engine for r in self.replicas])

    async def stop(self) -> None:
        await stop_members(r.engine for r in self.replicas)

    async def health(self) -> dict[str, Any]:
        now = self.clock()
        replicas = []
        for r in self.replicas:
            report = await r.engine.health()
            report.update(
                replica=r.name,
                up=self.is_up(r),
                cooled_for_s=round(max(0.0, r.cooled_until - now), 1),
                in_flight=r.in_flight,
                consecutive_fails=r.fails,
                latency_s=None if r.latency_s is None else round(r.latency_s, 4),
            )
            replicas.append(report)
        return {
            "id": self.model_id,
            "engine": self.kind,
            "state": self.state,
            "strategy": self.strategy,
            "replicas": replicas,
        }

    async def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        """Counted by the first replica that can (up ones first; a dead one is unavailable)."""
        for replica in sorted(self.replicas, key=lambda r: not self.is_up(r)):
            if replica.engine.state != "ready":
                continue
            with contextlib.suppress(EngineError):
                count = await replica.engine.count_prompt_tokens(request)
                if count is not None:
                    return count
        return None

    def context_size(self) -> int | None:
        """The smallest context among the replicas that tell theirs: any of them may answer."""
        sizes = [s for r in self.replicas if (s := r.engine.context_size()) is not None]
        return min(sizes) if sizes else None

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        # replicas that failed this request before (a non-streamed answer tried again) sit out
        tried = {r.index for r in self.replicas if self.tag(r) in request.avoid}
        error: EngineError | None = None
        for _ in range(1 + self.retries):
            replica = self.pick(tried)
            if replica is None:
                break
            tried.add(replica.index)
            request.replica = replica.name
            answered = False
            outcome = "cancelled"  # unless it ends otherwise: the gateway closed it early
            replica.in_flight += 1
            started = self.clock()
            events = replica.engine.generate(request)
            try:
                async for delta in events:
                    if not answered:
                        answered = True
                        replica.observe_latency(self.clock() - started)
                    yield delta
                outcome = "ok"
                self.succeeded(replica)
                return
            except EngineError as exc:  # the replica's fault when retryable, else the request's
                outcome = "failed" if exc.retryable else "rejected"
                if outcome == "rejected":
                    raise
                self.failed(replica)
                if answered:  # tokens went out: only the caller knows if the client saw them
                    request.avoid.add(self.tag(replica))
                    raise
                error = exc
            except Exception:
                outcome = "failed"
                self.failed(replica)
                raise
            finally:
                replica.in_flight -= 1
                if self._requests is not None:
                    self._requests.labels(self.model_id, replica.name, outcome).inc()
                with contextlib.suppress(Exception):
                    await events.aclose()
        raise error or engine_unavailable(self.model_id, "no replica is ready")

    def tag(self, replica: Replica) -> str:
        return f"{self.model_id}:{replica.name}"

    # -- balancing ----------------------------------------------------------------------------
    def is_up(self, replica: Replica) -> bool:
        return replica.engine.state == "ready" and replica.cooled_until <= self.clock()

    def pick(self, tried: set[int]) -> Replica | None:
        """The replica for the next attempt, None when no untried replica is ready."""
        ready = [r for r in self.replicas if r.index not in tried and r.engine.state == "ready"]
        if not ready:
            return None
        now = self.clock()
        warm = [r for r in ready if r.cooled_until <= now]
        if not warm:
            return min(ready, key=lambda r: r.cooled_until)
        n = len(self.replicas)
        # the ones after the last pick come first: round-robin, and how ties are broken
        in_turn = sorted(warm, key=lambda r: (r.index - self._last - 1) % n)
        if self.strategy == "least-busy":
            chosen = min(in_turn, key=lambda r: r.in_flight)
        elif self.strategy == "latency":
            chosen = min(in_turn, key=lambda r: r.latency_s or 0.0)  # unmeasured ones first
        else:
            chosen = in_turn[0]
        self._last = chosen.index
        return chosen

    def succeeded(self, replica: Replica) -> None:
        replica.fails = 0
        replica.cooled_until = 0.0

    def failed(self, replica: Replica) -> None:
        replica.fails += 1
        if replica.fails >= self.allowed_fails:
            replica.fails = 0
            replica.cooled_until = self.clock() + self.cooldown_s
            warn(
                f"replica {replica.name} of {self.model_id!r} failed {self.allowed_fails} "
                f"time(s) in a row; left out for {self.cooldown_s:g} s"
            )
