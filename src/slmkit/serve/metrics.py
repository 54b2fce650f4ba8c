"""Prometheus metrics of the gateway (one registry per app, exposed on GET /metrics)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from slmkit.serve.generation import Outcome

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class GatewayMetrics:
    """Every metric the gateway exports; names are listed in docs/serve.md."""

    def __init__(self, engines: Callable[[], list[Any]] | None = None) -> None:
        """`engines`: the gateway's engines at scrape time, for the resource gauges
        (serve/resources.py); without it those are left out."""
        self.registry = CollectorRegistry()
        if engines is not None:
            from slmkit.serve.resources import ResourceCollector

            self.registry.register(ResourceCollector(engines))
        self._requests(self.registry)
        self._engines(self.registry)
        self._guards(self.registry)
        self._keys(self.registry)
        self._replicas(self.registry)
        self._routing(self.registry)
        self._alerting(self.registry)

    def _requests(self, r: CollectorRegistry) -> None:
        """Requests: counts, latency, tokens, in flight and queued; the feedback on them."""
        self.requests = Counter(
            "slm_requests",
            "Requests answered, by endpoint, model and HTTP status.",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "slm_time_to_first_token_seconds",
            "Time from request to the first output token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "slm_time_per_output_token_seconds",
            "Mean time per output token after the first.",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "slm_request_latency_seconds",
            "End-to-end request latency.",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "slm_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "slm_completion_tokens", "Completion tokens generated.", ["model"], registry=r
        )
        self.in_flight = Gauge(
            "slm_requests_in_flight", "Requests being processed.", ["model"], registry=r
        )
        self.queue_depth = Gauge(
            "slm_queue_depth",
            "Requests waiting beyond the engine's parallel slots.",
            ["model"],
            registry=r,
        )
        self.feedback = Counter(
            "slm_feedback", "Feedback received, by rating.", ["rating"], registry=r
        )

    def _engines(self, r: CollectorRegistry) -> None:
        """The engines' state: up, restarts, the version an alias answers with."""
        self.engine_restarts = Counter(
            "slm_engine_restarts", "Engine restarts after a crash.", ["model"], registry=r
        )
        self.engine_up = Gauge(
            "slm_engine_up", "1 when the engine is ready.", ["model"], registry=r
        )
        self.alias_version = Gauge(
            "slm_alias_version_info",
            "1 for the registry version a model id served from an alias (`ref: '@support'`) answers with now.",
            ["model", "version"],
            registry=r,
        )

    def _guards(self, r: CollectorRegistry) -> None:
        """What the gateway did to answers: cache, loops, context fitting, redaction, audit."""
        self.cache = Counter(
            "slm_cache_requests", "Response cache lookups.", ["model", "result"], registry=r
        )
        self.repetition = Counter(
            "slm_repetition_events",
            "Repetition loops stopped, and retries made.",
            ["model", "action"],
            registry=r,
        )
        self.audit_problems = Counter(
            "slm_audit_problems",
            "Audit rows dropped (queue full) or not written (the database refused them).",
            ["kind"],
            registry=r,
        )
        for kind in ("dropped", "write_error"):
            self.audit_problems.labels(kind)
        self.context_actions = Counter(
            "slm_context_actions",
            "Prompts pruned or summarized to fit the context.",
            ["model", "action"],
            registry=r,
        )
        self.redactions = Counter(
            "slm_output_redactions", "Spans replaced by the output filter.", ["model"], registry=r
        )

    def _keys(self, r: CollectorRegistry) -> None:
        """Per API key name: requests, tokens, 429s (serve/key_limits.py)."""
        self.key_requests = Counter(
            "slm_key_requests",
            "Generation requests admitted under each API key (by key name).",
            ["key"],
            registry=r,
        )
        self.key_tokens = Counter(
            "slm_key_tokens",
            "Tokens counted against each API key, by kind (prompt, completion).",
            ["key", "kind"],
            registry=r,
        )
        self.key_rejections = Counter(
            "slm_key_rejections",
            "Requests refused with 429 by a per-key limit (rpm, tpm, daily_tokens).",
            ["key", "limit"],
            registry=r,
        )

    def _replicas(self, r: CollectorRegistry) -> None:
        """Replicas and remote endpoints (engines/replicas.py, engines/remote.py)."""
        self.replica_requests = Counter(
            "slm_replica_requests",
            "Requests sent to each replica of a model, by outcome (ok, failed, rejected, cancelled).",
            ["model", "replica", "outcome"],
            registry=r,
        )
        self.replica_in_flight = Gauge(
            "slm_replica_in_flight",
            "Requests being answered by each replica.",
            ["model", "replica"],
            registry=r,
        )
        self.replica_up = Gauge(
            "slm_replica_up",
            "1 when the replica is ready and not cooled down after failures.",
            ["model", "replica"],
            registry=r,
        )
        self.failovers = Counter(
            "slm_failovers",
            "Non-streamed requests asked again on another replica after one failed part-way.",
            ["model"],
            registry=r,
        )
        self.upstream_cost = Counter(
            "slm_upstream_cost_usd",
            "USD spent on remote endpoints: reported usage x the configured prices.",
            ["model"],
            registry=r,
        )

    def _routing(self, r: CollectorRegistry) -> None:
        """Routes (serve/routing.py) and A/B splits (engines/ab.py)."""
        self.route_requests = Counter(
            "slm_route_requests",
            "Requests through a route, by the member that answered and why (default, rule:<name>, "
            "escalated:<check>, fallback:context, fallback:error).",
            ["route", "target", "reason"],
            registry=r,
        )
        self.ab_requests = Counter(
            "slm_ab_requests",
            "Requests of an A/B split model, by the version (arm) that answered them.",
            ["model", "version"],
            registry=r,
        )

    def _alerting(self, r: CollectorRegistry) -> None:
        """Alert rules firing and webhook deliveries (serve/alerts.py, serve/webhook.py)."""
        self.alerts = Gauge(
            "slm_alert_firing", "1 while an alert rule fires.", ["rule"], registry=r
        )
        self.alert_deliveries = Counter(
            "slm_alert_deliveries",
            "Alert webhook POST attempts by outcome: delivered, retried (an attempt that failed "
            "and will be tried again), failed (given up after every retry).",
            ["outcome"],
            registry=r,
        )

    def observe_tokens(self, model: str, outcome: Outcome, cached: bool) -> None:
        """Token counts, time to first token and (not for cached answers) time per output token."""
        if outcome.prompt_tokens:
            self.prompt_tokens.labels(model).inc(outcome.prompt_tokens)
        tokens = outcome.tokens_out()
        if tokens:
            self.completion_tokens.labels(model).inc(tokens)
        if outcome.ttft is not None:
            self.ttft.labels(model).observe(outcome.ttft)
        first, last = outcome.first_token_at, outcome.last_token_at
        if not cached and tokens > 1 and first is not None and last is not None:
            self.tpot.labels(model).observe((last - first) / (tokens - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
