"""The gateway's response cache: which requests may be answered from it, and under which key.

Only deterministic requests (temperature 0, or a seed) to one model: never a routed
answer (it depends on the checks and the members' state) nor an A/B split's (one arm's answer must
never be served for another's). An alias's answers are keyed by version: the version serving now
when looking up, the one that answered when storing, so a promotion is never answered from the
old version's cache and a rollback finds its answers again.

The answers live in this process (an LRU of `max_entries`), or with `state.cache` in Valkey/Redis
for `ttl_s` seconds, where every gateway on it finds what any of them stored. A shared cache that
does not answer is a miss (counted as `error`), never a failed request.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from slmkit.serve.config import CacheSettings
from slmkit.serve.engines.base import Engine
from slmkit.serve.generation import Outcome, RequestContext
from slmkit.serve.guards import CachedResponse, ResponseCache
from slmkit.serve.metrics import GatewayMetrics
from slmkit.state.redis_state import SharedAnswers


class AnswerCache:
    """Looks up and stores whole answers for the gateway (a no-op when `cache.enabled` is off)."""

    def __init__(
        self,
        settings: CacheSettings,
        engines: Mapping[str, Engine],
        metrics: GatewayMetrics,
        cache_client: Any = None,
    ) -> None:
        self.enabled = settings.enabled
        self.entries = ResponseCache(settings.max_entries)
        self.shared = SharedAnswers(cache_client, settings.ttl_s) if cache_client else None
        self.engines = engines
        self.metrics = metrics

    async def lookup(self, ctx: RequestContext) -> Outcome | None:
        """The cached answer to this request (and the `x-slm-cache` header), or None."""
        if not self.enabled or not self._cacheable(ctx):
            return None
        key = ctx.gen.cache_key(self._version(ctx, answered=False))
        hit = await self._get(ctx, key)
        self.metrics.cache.labels(ctx.gen.model_id, "hit" if hit else "miss").inc()
        ctx.headers["x-slm-cache"] = "hit" if hit else "miss"
        if hit is None:
            return None
        ctx.rec.cached = True
        return Outcome.from_cache(hit, ttft=time.perf_counter() - ctx.started)

    async def store(self, ctx: RequestContext, outcome: Outcome) -> None:
        if not self.enabled or outcome.repeated or not self._cacheable(ctx):
            return
        key = ctx.gen.cache_key(self._version(ctx, answered=True))
        if self.shared is None:
            self.entries.put(key, outcome.to_cache())
            return
        try:
            await self.shared.put(key, asdict(outcome.to_cache()))
        except Exception:  # the shared cache is an optimisation: the answer went out anyway
            self.metrics.cache.labels(ctx.gen.model_id, "error").inc()

    async def _get(self, ctx: RequestContext, key: str) -> CachedResponse | None:
        if self.shared is None:
            return self.entries.get(key)
        try:
            found = await self.shared.get(key)
        except Exception:
            self.metrics.cache.labels(ctx.gen.model_id, "error").inc()
            return None
        return None if found is None else CachedResponse(**found)

    def _cacheable(self, ctx: RequestContext) -> bool:
        split = getattr(self.engines.get(ctx.gen.model_id), "kind", None) == "ab"
        return ctx.gen.deterministic and not ctx.rec.route and not split

    def _version(self, ctx: RequestContext, *, answered: bool) -> str | None:
        """The version an alias serves now (lookup) or the one that answered (store); None for
        models that do not move between versions while serving."""
        engine = self.engines.get(ctx.gen.model_id)
        if getattr(engine, "kind", None) != "alias":
            return None
        version = ctx.gen.version if answered else getattr(engine, "version", None)
        return version if isinstance(version, str) else None
