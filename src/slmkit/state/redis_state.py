"""State that several gateways share in Valkey/Redis: per-key request and token windows, and the
response cache.

The windows are checked and updated by Lua scripts, so a check and the reservation it allows are
one atomic step however many gateways ask at once, and time is the server's (`TIME`), so the
gateways' clocks need not agree. Per key (the name in braces keeps a key's entries together on
one cluster slot):

- `slm:key:{name}:req`: a sorted set of the requests of the last 60 s (member: the ticket id);
- `slm:key:{name}:tok`: tokens used in the last 60 s (member `ticket:tokens`, score: the time);
- `slm:key:{name}:held` / `:until`: prompt tokens reserved by requests in flight, and when each
  reservation lapses (a gateway killed mid-request cannot hold them for ever);
- `slm:key:{name}:day:N`: tokens used on UTC day N (kept two days).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from slmkit.errors import ConfigError
from slmkit.state.config import display_url

WINDOW_S = 60
DAY_TTL_S = 2 * 86_400

# KEYS: req, tok, held, until, day prefix. ARGV: rpm, tpm, daily (-1 = none), reserve, ticket,
# hold_s, commit (1 = take the request and its reservation when no limit is reached).
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)) do
  redis.call('HDEL', KEYS[3], id)
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local held = 0
for _, v in ipairs(redis.call('HVALS', KEYS[3])) do held = held + tonumber(v) end
local rpm, tpm, daily = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if rpm >= 0 then
  local n = redis.call('ZCARD', KEYS[1])
  if n >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], n - rpm, n - rpm, 'WITHSCORES')
    return {'rpm', n, tostring(tonumber(oldest[2]) + window - now)}
  end
end
if tpm >= 0 then
  local events = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  local used = held
  for i = 1, #events, 2 do used = used + tonumber(string.match(events[i], ':(%d+)$')) end
  if used >= tpm then
    local excess, wait = used - tpm + 1, window
    for i = 1, #events, 2 do
      excess = excess - tonumber(string.match(events[i], ':(%d+)$'))
      if excess <= 0 then wait = tonumber(events[i + 1]) + window - now; break end
    end
    return {'tpm', used, tostring(wait)}
  end
end
if daily >= 0 then
  local day = KEYS[5] .. ':' .. math.floor(now / 86400)
  local used = tonumber(redis.call('GET', day) or '0') + held
  if used >= daily then return {'daily_tokens', used, tostring(86400 - now % 86400)} end
end
if ARGV[7] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('EXPIRE', KEYS[1], window * 2)
  if tonumber(ARGV[4]) > 0 then
    redis.call('HSET', KEYS[3], ARGV[5], ARGV[4])
    redis.call('ZADD', KEYS[4], now + tonumber(ARGV[6]), ARGV[5])
    redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]) * 2)
    redis.call('EXPIRE', KEYS[4], tonumber(ARGV[6]) * 2)
  end
end
return {'ok', 0, '0'}
"""

# KEYS: tok, held, until, day prefix. ARGV: ticket, tokens used.
SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local total = tonumber(ARGV[2])
if total > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[1] .. ':' .. total)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
  local day = KEYS[4] .. ':' .. math.floor(now / 86400)
  redis.call('INCRBY', day, total)
  redis.call('EXPIRE', day, tonumber(ARGV[4]))
end
return 1
"""


@dataclass(frozen=True)
class Refusal:
    """A limit a key has reached: which (`rpm`, `tpm`, `daily_tokens`), how much is used, and
    the seconds until a request may go again."""

    limit: str
    used: int
    wait_s: float


def client_url(url: str) -> str:
    """The URL as redis-py takes it: `valkey://` and `valkeys://` are `redis://` and `rediss://`."""
    parts = urlsplit(url)
    scheme = {"valkey": "redis", "valkeys": "rediss"}.get(parts.scheme.lower(), parts.scheme)
    return urlunsplit((scheme, *parts[1:]))


def connect(url: str, setting: str = "state.cache") -> Any:
    """An asyncio Valkey/Redis client for `url` (no connection is made yet); ConfigError when the
    client library is not installed."""
    try:
        import redis.asyncio as redis_asyncio
    except ImportError as exc:
        raise ConfigError(
            f"{setting}: a Valkey/Redis URL needs the `redis` package: pip install 'slmkit[shared]'"
        ) from exc
    return redis_asyncio.from_url(client_url(url), socket_connect_timeout=5, socket_timeout=10)


async def check_reachable(client: Any, url: str, setting: str = "state.cache") -> None:
    """PING the server; ConfigError naming it (never its password) when it does not answer."""
    try:
        await client.ping()
    except Exception as exc:  # redis-py raises ConnectionError, TimeoutError, AuthenticationError
        raise ConfigError(
            f"{setting}: cannot reach {display_url(url)} ({type(exc).__name__}: {exc})"
        ) from exc


class KeyWindows:
    """Per-key rpm/tpm/daily-token windows in Valkey/Redis, shared by every gateway on it."""

    def __init__(self, client: Any, prefix: str = "slm", window_s: int = WINDOW_S) -> None:
        self.client = client
        self.prefix = prefix
        self.window_s = window_s
        self._admit = client.register_script(ADMIT)
        self._settle = client.register_script(SETTLE)

    def _keys(self, name: str) -> list[str]:
        base = f"{self.prefix}:key:{{{name}}}"
        return [f"{base}:req", f"{base}:tok", f"{base}:held", f"{base}:until", f"{base}:day"]

    async def admit(
        self,
        name: str,
        limits: tuple[int | None, int | None, int | None],
        reserve: int,
        ticket: str,
        hold_s: float,
        commit: bool = True,
    ) -> Refusal | None:
        """The limit (rpm, tpm, daily tokens) already reached, or None; with `commit`, a request
        that may go is counted and its `reserve` prompt tokens are held for `hold_s` at most."""
        rpm, tpm, daily = (-1 if v is None else v for v in limits)
        args = [rpm, tpm, daily, reserve, ticket, max(1, int(hold_s)), int(commit), self.window_s]
        limit, used, wait = await self._admit(keys=self._keys(name), args=args)
        limit = limit.decode() if isinstance(limit, bytes) else str(limit)
        return None if limit == "ok" else Refusal(limit, int(used), float(wait))

    async def settle(self, name: str, ticket: str, tokens: int) -> None:
        """Replace a request's reservation by the tokens it used."""
        keys = self._keys(name)
        await self._settle(
            keys=[keys[1], keys[2], keys[3], keys[4]],
            args=[ticket, tokens, self.window_s, DAY_TTL_S],
        )


class SharedAnswers:
    """Whole answers in Valkey/Redis under the cache key, each kept `ttl_s` seconds (JSON)."""

    def __init__(self, client: Any, ttl_s: float, prefix: str = "slm") -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.prefix = prefix

    async def get(self, key: str) -> dict[str, Any] | None:
        raw = await self.client.get(f"{self.prefix}:answer:{key}")
        return None if raw is None else dict(json.loads(raw))

    async def put(self, key: str, value: dict[str, Any]) -> None:
        ttl = max(1, int(self.ttl_s))
        await self.client.set(f"{self.prefix}:answer:{key}", json.dumps(value), ex=ttl)
