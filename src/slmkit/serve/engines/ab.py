"""`ABEngine`: one model id split between versions (arms) by weight, itself an `Engine`, so the
gateway keeps one engine per model id.

With `sticky: user` a request's `user` is hashed (with the model id) to a point in [0, 1) and the
arm whose cumulative weight share covers it answers: the same user always meets the same version,
and users spread over the arms in proportion to the weights. Requests without a `user`, and every
request with `sticky: none`, draw an arm at random by weight. The arm's name goes into the request
(`version`), hence the audit row, and `slm_ab_requests_total{model,version}`. A request keeps its
arm for a retry (repetition guard) and when a route asks again.

While an arm's engine is not ready (restarting after a crash), its users go to the ready arms, by
weight, and are recorded with the version that answered them; users of the ready arms keep theirs.
The split stays available, and the comparison stays per version. The split is ready while any arm is.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from slmkit.serve.engines.base import Delta, Engine, EngineState
from slmkit.serve.engines.group import (
    RestartHookGroup,
    group_state,
    start_members,
    stop_members,
)
from slmkit.serve.engines.request import GenerationRequest


@dataclass
class Arm:
    """One version of a split model: its name (the `version` of its answers), weight and engine."""

    name: str
    weight: float
    engine: Engine
    ref: str = ""


def user_point(model_id: str, user: str) -> float:
    """A stable point in [0, 1) for a user of a model (sha-256, so it does not vary per process)."""
    digest = hashlib.sha256(f"{model_id}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _slice_at(arms: list[Arm], point: float) -> tuple[Arm, float]:
    """The arm whose weight share of [0, 1) holds `point`, and where in that share it lies (0-1)."""
    edge, total = 0.0, sum(a.weight for a in arms)
    for arm in arms:
        share = arm.weight / total
        if point < edge + share:
            return arm, min(max((point - edge) / share, 0.0), 0.999999)
        edge += share
    return arms[-1], 0.999999  # rounding: the shares may sum to just under 1


class ABEngine(RestartHookGroup):
    """Splits one model id between versions by weight, sticky per `user` when asked."""

    kind = "ab"

    def __init__(
        self,
        model_id: str,
        arms: list[Arm],
        *,
        sticky: str = "user",
        rng: random.Random | None = None,
    ) -> None:
        self.model_ids = [model_id]
        self.model_id = model_id
        self.arms = arms
        self.sticky = sticky
        self.rng = rng or random.Random()
        total = sum(arm.weight for arm in arms)
        self.shares = [arm.weight / total for arm in arms]
        for arm in arms:
            if hasattr(arm.engine, "label"):  # child engines name their version in log lines
                arm.engine.label = f"engine {model_id!r} (version {arm.name})"  # type: ignore[attr-defined]
        self._by_name = {arm.name: arm for arm in arms}
        self._requests: Any = None  # slm_ab_requests, once metrics attach

    # -- choosing the arm -----------------------------------------------------------------------
    def arm_at(self, point: float) -> Arm:
        """The arm whose slice of [0, 1) holds `point`. While that arm is down, its users (and
        only they: the others keep their arm) spread over the ready arms by weight, by where the
        point lies inside the down arm's slice."""
        arm, inside = _slice_at(self.arms, point)
        ready = [a for a in self.arms if a.engine.state == "ready"]
        if not ready or arm in ready:
            return arm
        return _slice_at(ready, inside)[0]

    def sticky_arm(self, request: GenerationRequest) -> Arm | None:
        """The arm the request already has, or its `user`'s arm; None: a random draw."""
        if request.version in self._by_name:
            return self._by_name[request.version]
        if self.sticky == "user" and request.user:
            return self.arm_at(user_point(self.model_id, request.user))
        return None

    def assign(self, request: GenerationRequest) -> Arm:
        """The request's arm, chosen once: its name is written into `request.version`."""
        if request.version in self._by_name:
            return self._by_name[request.version]
        arm = self.sticky_arm(request) or self.arm_at(self.rng.random())
        request.version = arm.name
        if self._requests is not None and request.source is None:  # users' requests only
            self._requests.labels(self.model_id, arm.name).inc()
        return arm

    def arm_cards(self) -> list[dict[str, Any]]:
        """The versions for /v1/models: name, weight and traffic share."""
        return [
            {"version": arm.name, "weight": arm.weight, "share": round(share, 4)}
            for arm, share in zip(self.arms, self.shares, strict=True)
        ]

    # -- the Engine protocol --------------------------------------------------------------------
    @property
    def state(self) -> EngineState:
        return group_state(arm.engine for arm in self.arms)

    @property
    def capacity(self) -> int:
        return sum(arm.engine.capacity for arm in self.arms)

    @property
    def restarts(self) -> int:
        return sum(arm.engine.restarts for arm in self.arms)

    def hooked_members(self) -> list[Engine]:
        return [arm.engine for arm in self.arms]

    def attach_metrics(self, metrics: Any) -> None:
        """`metrics`: the gateway's, whose `ab_requests` counts answers by model and arm."""
        self._requests = metrics.ab_requests
        for arm in self.arms:
            metrics.ab_requests.labels(self.model_id, arm.name)  # listed at 0 from the start
            attach = getattr(arm.engine, "attach_metrics", None)
            if attach is not None:
                attach(metrics)

    async def start(self) -> None:
        await start_members([arm.engine for arm in self.arms])

    async def stop(self) -> None:
        await stop_members(arm.engine for arm in self.arms)

    async def health(self) -> dict[str, Any]:
        arms = []
        for card, arm in zip(self.arm_cards(), self.arms, strict=True):
            report = await arm.engine.health()
            arms.append({**card, "ref": arm.ref, **report})
        return {
            "id": self.model_id,
            "engine": self.kind,
            "state": self.state,
            "sticky": self.sticky,
            "versions": arms,
        }

    async def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        """Counted by the request's arm when known, else the first; the arm is not chosen here
        (a route counts tokens before its rules may send the request elsewhere)."""
        arm = self.sticky_arm(request) or self.arms[0]
        return await arm.engine.count_prompt_tokens(request)

    def context_size(self) -> int | None:
        """The smallest context among the arms that tell theirs: either may answer."""
        sizes = [s for arm in self.arms if (s := arm.engine.context_size()) is not None]
        return min(sizes) if sizes else None

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        events = self.assign(request).engine.generate(request)
        try:
            async for delta in events:
                yield delta
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()
