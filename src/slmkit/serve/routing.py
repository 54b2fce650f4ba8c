"""The router: a request for a route's public id goes to one member of the route's chain (the first
rule that matches picks it, else the first member), and moves down the chain when that member's
answer fails an escalation check or the member fails. The client sees only the final answer; the
route, the reason and the member that answered go to the audit row, /metrics and headers.

Reasons: `default`, `rule:<name>`, `escalated:<check>` (empty, refusal, repetition, low_logprob,
json_schema, must_not_include), `fallback:context` (the prompt is over a member's context) and
`fallback:error`; the reason of the last move is kept.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

from slmkit import answer_checks
from slmkit.errors import ConfigError
from slmkit.serve import api_errors
from slmkit.serve.admission import Admission, AdmissionSlot
from slmkit.serve.api_errors import ApiError
from slmkit.serve.config import RepetitionGuard, ServeConfig
from slmkit.serve.engines.base import Delta, Engine
from slmkit.serve.engines.errors import EngineError
from slmkit.serve.engines.request import GenerationRequest
from slmkit.serve.generation import (
    Outcome,
    RequestContext,
    collect,
    generate_with_retry,
    prompt_text,
)
from slmkit.serve.metrics import GatewayMetrics
from slmkit.serve.protocol import ChatCompletionRequest, CompletionRequest
from slmkit.serve.route_config import EscalationChecks, Route, RouteRule, route_problem
from slmkit.serve.streaming import GuardedStream, OnClose, StreamResponder

Body = ChatCompletionRequest | CompletionRequest


@dataclass
class RoutePlan:
    """Where a request stands: the members still to try (the current target first) and why the
    current target answers. A plain model id is a one-member plan (`plain`): it is run like a
    route's, without a route's name in the audit row and headers."""

    route: Route
    members: list[str]
    reason: str
    plain: bool = False

    @classmethod
    def single(cls, model_id: str) -> RoutePlan:
        """The plan of a request for a served model's own id."""
        route = Route.model_construct(
            id=model_id,
            chain=[model_id],
            rules=[],
            escalate=EscalationChecks(),
            fallback_on_error=False,
        )
        return cls(route, [model_id], "default", plain=True)

    @property
    def target(self) -> str:
        return self.members[0]

    @property
    def last(self) -> bool:
        return len(self.members) == 1

    @property
    def holds_stream(self) -> bool:
        """A stream is answered only once the checks passed (TTFT = the whole checked answer)."""
        return self.route.escalate.active and not self.last

    def pass_on_reason(self, error: ApiError) -> str | None:
        """Why a member's error moves the request to the next member, or None (it is final): a
        prompt over the member's context always moves on (a context-window fallback), an engine
        error (5xx, 429) when the route's `fallback_on_error` allows it."""
        if self.last:
            return None
        if error.code == "context_length_exceeded":
            return "fallback:context"
        return "fallback:error" if error.retryable and self.route.fallback_on_error else None

    def move_on(self, reason: str) -> None:
        self.members.pop(0)
        self.reason = reason


@dataclass
class RequestFacts:
    """What the rules of a route look at."""

    text: str  # the last user message (chat) or the prompt (completions)
    metadata: Mapping[str, str]
    user: str | None
    headers: Mapping[str, str]  # case-insensitive (Starlette's Headers)
    count_tokens: Callable[[], Awaitable[int]]


async def rule_matches(rule: RouteRule, facts: RequestFacts) -> bool:
    """Every condition the rule gives holds (the token count is asked for last, only if needed)."""
    if rule.pattern is not None and not re.search(rule.pattern, facts.text):
        return False
    if rule.user is not None and not re.search(rule.user, facts.user or ""):
        return False
    if rule.metadata and any(facts.metadata.get(k) != v for k, v in rule.metadata.items()):
        return False
    if rule.header and any(facts.headers.get(k) != v for k, v in rule.header.items()):
        return False
    return rule.prompt_tokens_over is None or await facts.count_tokens() > rule.prompt_tokens_over


def failed_check(
    outcome: Outcome,
    checks: EscalationChecks,
    gen: GenerationRequest,
    guard: RepetitionGuard,
    logprobs: list[float],
) -> str | None:
    """The first escalation check a chain member's answer fails (its name in the reason), or None."""
    return answer_checks.failed_check(
        outcome.text,
        checks,
        response_format=gen.passthrough.get("response_format"),
        tool_calls=bool(outcome.extra.get("tool_calls")),
        repeated=outcome.repeated,
        logprobs=logprobs,
        ngram=guard.ngram,
        min_repeats=guard.min_repeats,
    )


class LogprobTap:
    """An engine seen through a tap that keeps the token log-probabilities of what it generates."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.logprobs: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        events = self.engine.generate(request)
        try:
            async for delta in events:
                self.logprobs.extend(delta.logprobs)
                yield delta
        finally:
            await events.aclose()


class Router:
    """Resolves routes, walks their chains and says why a request ended where it did."""

    def __init__(
        self,
        config: ServeConfig,
        engines: Mapping[str, Engine],
        admission: Admission,
        metrics: GatewayMetrics,
    ) -> None:
        problem = route_problem(config.routes, engines)
        if problem:  # models given on the command line are checked here, not in the file
            raise ConfigError(f"routes: {problem}")
        self.config = config
        self.engines = engines
        self.admission = admission
        self.metrics = metrics
        self.routes = {route.id: route for route in config.routes}

    # -- resolution -----------------------------------------------------------------------
    async def plan(self, body: Body, headers: Mapping[str, str], ctx: RequestContext) -> RoutePlan:
        """The plan of a request (its target set on `ctx`): a route's chain from the member its
        rules pick, or the one model a plain id names (404 when nothing is served by that id)."""
        route = self.routes.get(body.model)
        if route is None:
            if body.model not in self.engines:
                raise api_errors.model_not_found(body.model)
            return RoutePlan.single(body.model)
        facts = self._facts(body, headers, ctx, route)
        for rule in route.rules:
            if await rule_matches(rule, facts):
                members = route.chain[route.chain.index(rule.to) :]
                plan = RoutePlan(route, members, f"rule:{rule.name}")
                break
        else:
            plan = RoutePlan(route, list(route.chain), "default")
        self._aim(plan, ctx)
        return plan

    def _facts(
        self, body: Body, headers: Mapping[str, str], ctx: RequestContext, route: Route
    ) -> RequestFacts:
        if isinstance(body, ChatCompletionRequest):
            users = [m for m in body.messages if m.role == "user"]
            text = users[-1].text() if users else ""
        else:
            text = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        engine = self.engines[route.chain[0]]

        async def count_tokens() -> int:
            try:
                counted = await engine.count_prompt_tokens(ctx.gen)
            except EngineError:  # the first member is down: the rules still apply
                counted = None
            return counted if counted is not None else len(prompt_text(ctx.gen)) // 4  # ~4 a token

        metadata = getattr(body, "metadata", None)
        return RequestFacts(text, metadata or {}, body.user, headers, count_tokens)

    def _aim(self, plan: RoutePlan, ctx: RequestContext) -> None:
        """Point the request at the plan's target, and say so in the audit row and the headers."""
        ctx.gen.model_id = plan.target
        if plan.plain:
            return
        rec = ctx.rec
        rec.route, rec.route_reason, rec.served_by = plan.route.id, plan.reason, plan.target
        ctx.headers.update(
            {
                "x-slm-route": plan.route.id,
                "x-slm-route-reason": plan.reason,
                "x-slm-served-by": plan.target,
            }
        )

    def _move_on(self, plan: RoutePlan, ctx: RequestContext, reason: str) -> None:
        plan.move_on(reason)
        self._aim(plan, ctx)
        # the replicas the last member used are not the next member's; the version stays: the
        # A/B report counts an escalated answer against the version that gave it
        ctx.gen.replica = None
        ctx.gen.avoid = set()

    # -- running the chain ----------------------------------------------------------------
    def admit(self, plan: RoutePlan, ctx: RequestContext) -> AdmissionSlot:
        """A slot on the plan's target; a member that is down or full passes the request on."""
        while True:
            try:
                return self.admission.admit(plan.target)
            except ApiError as exc:
                if (reason := plan.pass_on_reason(exc)) is None:
                    raise
                self._move_on(plan, ctx, reason)

    async def run(
        self, plan: RoutePlan, ctx: RequestContext, slot: AdmissionSlot | None = None
    ) -> Outcome:
        """The first answer down the chain that passes the checks (the last member's is final).
        The first member runs on the request's admission `slot`; it is given back as the request
        moves on, and each later member takes its own. All share the request's deadline."""
        admitted = plan.target
        while True:
            try:
                with contextlib.ExitStack() as stack:
                    if plan.target != admitted:
                        if slot is not None:
                            slot.release()  # the first member is done with this request
                        stack.enter_context(self.admission.admit(plan.target))
                    outcome, failed = await self._ask(plan, ctx)
            except ApiError as exc:
                if (reason := plan.pass_on_reason(exc)) is None:
                    raise
                self._move_on(plan, ctx, reason)
                continue
            if failed is None:
                return outcome
            self._move_on(plan, ctx, f"escalated:{failed}")

    async def _ask(self, plan: RoutePlan, ctx: RequestContext) -> tuple[Outcome, str | None]:
        """The target's answer, and the check it failed (none is run on the last member)."""
        engine = self.engines[plan.target]
        if plan.last:
            outcome = await generate_with_retry(
                engine, ctx.gen, ctx.started, self.config, self.metrics
            )
            return outcome, None
        checks, tap = plan.route.escalate, LogprobTap(engine)
        gen = ctx.gen
        if checks.min_mean_logprob is not None:  # chat takes a flag, completions a count
            asked_for = True if gen.messages is not None else 1
            gen = replace(gen, passthrough={**gen.passthrough, "logprobs": asked_for})
        asked = cast(Engine, tap)  # an Engine in all but name: it forwards the rest
        if checks.repetition:  # a loop escalates instead of being retried here
            outcome = await collect(asked, gen, ctx.started, self.config)
        else:
            outcome = await generate_with_retry(asked, gen, ctx.started, self.config, self.metrics)
        ctx.gen.version = ctx.gen.version or gen.version  # an A/B arm answered the logprobs copy
        ctx.gen.replica = gen.replica
        return outcome, failed_check(outcome, checks, gen, self.config.repetition, tap.logprobs)

    async def hold(
        self, plan: RoutePlan, ctx: RequestContext, slot: AdmissionSlot | None = None
    ) -> Outcome:
        """`run` for a stream that is held until the checks pass: its first token reaches the
        client when the whole answer is known, so that is its time to first token."""
        outcome = await self.run(plan, ctx, slot)
        outcome.ttft = time.perf_counter() - ctx.started
        return outcome

    async def open_stream(
        self, plan: RoutePlan, ctx: RequestContext, streams: StreamResponder, on_close: OnClose
    ) -> GuardedStream:
        """A live stream from the target (a route without checks); an engine error before the
        first token moves on down the chain like `run`."""
        admitted_target = plan.target
        while True:
            extra: AdmissionSlot | None = None
            try:
                if plan.target != admitted_target:
                    extra = self.admission.admit(plan.target)
                return await streams.open(
                    self.engines[plan.target], ctx, _also_release(on_close, extra)
                )
            except ApiError as exc:
                if extra is not None:
                    extra.release()
                if (reason := plan.pass_on_reason(exc)) is None:
                    raise
                self._move_on(plan, ctx, reason)


def _also_release(on_close: OnClose, slot: AdmissionSlot | None) -> OnClose:
    if slot is None:
        return on_close

    async def close() -> None:
        slot.release()
        await on_close()

    return close
