"""Admission: how many requests each model has in flight, the 429 limit on that number, and the
slot token that gives an admitted request's place back exactly once."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from types import TracebackType

from slmkit.serve import api_errors
from slmkit.serve.engines.base import Engine
from slmkit.serve.metrics import GatewayMetrics


class Admission:
    """Per-model in-flight counts behind the 429 limit (`limits.max_queue`), mirrored in gauges."""

    def __init__(self, engines: dict[str, Engine], max_queue: int, metrics: GatewayMetrics) -> None:
        self.engines = engines
        self.max_queue = max_queue
        self.metrics = metrics
        self.in_flight: dict[str, int] = dict.fromkeys(engines, 0)

    def admit(self, model: str) -> AdmissionSlot:
        """A slot for one request, or 503 (engine not ready) / 429 (queue full)."""
        engine = self.engines[model]
        if engine.state != "ready":
            raise api_errors.engine_unavailable(model, engine.state)
        if self.in_flight[model] >= self.max_queue:
            raise api_errors.queue_full(model)
        self._count(model, +1)
        return AdmissionSlot(partial(self._count, model, -1))

    def _count(self, model: str, step: int) -> None:
        n = self.in_flight[model] = self.in_flight[model] + step
        self.metrics.in_flight.labels(model).set(n)
        self.metrics.queue_depth.labels(model).set(max(0, n - self.engines[model].capacity))


class AdmissionSlot:
    """One admitted request's place in its model's queue; released exactly once.

    The request handler holds it in a `with` block, which releases it on the way out, error or
    not. A stream answers after the handler returned: it takes the slot over with `hand_over()`
    and calls `release()` when it closes.
    """

    def __init__(self, give_back: Callable[[], None]) -> None:
        self._give_back = give_back
        self._released = False
        self._handed_over = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._give_back()

    def hand_over(self) -> None:
        """The `with` block no longer releases the slot: whoever took it over does."""
        self._handed_over = True

    def __enter__(self) -> AdmissionSlot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._handed_over:
            self.release()
