"""`slm bench serve`: N concurrent streaming clients against an OpenAI-compatible server.

Reports TTFT, TPOT (time per output token after the first), ITL (gap between streamed tokens),
end-to-end latency (p50/p95/p99), aggregate output tokens/s and errors, like vLLM's benchmark.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from pydantic import Field

from slmkit.config import StrictModel
from slmkit.serve.logs import percentile

DEFAULT_PROMPTS = (
    "Explain in a few sentences what a language model is.",
    "Write a short note thanking a customer for their order.",
    "List three tips for writing clear e-mails.",
    "What is the capital of France, and what is it known for?",
    "Describe a sunrise over the sea.",
    "How do I reset a forgotten password on a website?",
    "Give me a recipe idea for a quick dinner.",
    "Why is the sky blue? Answer briefly.",
)


@dataclass
class RequestResult:
    ok: bool
    ttft: float | None = None
    e2e: float = 0.0
    output_tokens: int = 0
    itls: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


@dataclass
class BenchReport:
    url: str
    model: str
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    output_tokens: int
    tokens_per_s: float
    requests_per_s: float
    ttft_ms: dict[str, float | None]
    tpot_ms: dict[str, float | None]
    itl_ms: dict[str, float | None]
    e2e_ms: dict[str, float | None]
    first_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pcts(values: list[float]) -> dict[str, float | None]:
    def ms(q: float) -> float | None:
        v = percentile(values, q)
        return None if v is None else round(v * 1000, 2)

    return {"p50": ms(50), "p95": ms(95), "p99": ms(99)}


async def _one_request(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    prompt: str,
    max_tokens: int,
    headers: dict[str, str],
) -> RequestResult:
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
    }
    start = time.perf_counter()
    result = RequestResult(ok=False)
    last: float | None = None
    chunks = 0
    try:
        async with client.stream("POST", url, json=payload, headers=headers) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    result.error = str(chunk["error"])[:200]
                    return result
                if chunk.get("usage"):
                    result.output_tokens = int(chunk["usage"].get("completion_tokens") or 0)
                choices = chunk.get("choices") or []
                if choices and choices[0].get("delta", {}).get("content"):
                    now = time.perf_counter()
                    if last is None:
                        result.ttft = now - start
                    else:
                        result.itls.append(now - last)
                    last = now
                    chunks += 1
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.e2e = time.perf_counter() - start
    result.output_tokens = result.output_tokens or chunks
    result.ok = True
    return result


class BenchConfig(StrictModel):
    """What `slm bench serve` sends."""

    url: str = Field(
        default="http://127.0.0.1:8000/v1",
        description="Base URL of the OpenAI API, e.g. http://127.0.0.1:8000/v1.",
    )
    model: str = Field(default="default", description="Model id to request.")
    concurrency: int = Field(default=8, ge=1, description="Concurrent streaming clients.")
    requests: int = Field(default=32, ge=1, description="Requests in total.")
    max_tokens: int = Field(default=64, ge=1, description="max_tokens per request.")
    api_key: str | None = Field(default=None, description="API key, if the server needs one.")
    timeout_s: float = Field(default=600, gt=0, description="Seconds one request may take.")


async def run_bench(
    base_url: str, model: str, *, prompts: list[str] | None = None, **settings: Any
) -> BenchReport:
    """Send streaming chat requests (`settings`: BenchConfig's other fields) and time them."""
    config = BenchConfig(url=base_url, model=model, **settings)
    concurrency, requests, max_tokens = config.concurrency, config.requests, config.max_tokens
    api_key, timeout_s = config.api_key, config.timeout_s
    prompts = prompts or list(DEFAULT_PROMPTS)
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    todo: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        todo.put_nowait(i)
    results: list[RequestResult] = []
    limits = httpx.Limits(
        max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2
    )
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            while not todo.empty():
                i = todo.get_nowait()
                results.append(
                    await _one_request(
                        client, url, model, prompts[i % len(prompts)], max_tokens, headers
                    )
                )

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        duration = time.perf_counter() - start
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    errors = [r for r in results if not r.ok]
    return BenchReport(
        url=base_url,
        model=model,
        concurrency=concurrency,
        requests=len(results),
        errors=len(errors),
        duration_s=round(duration, 3),
        output_tokens=tokens,
        tokens_per_s=round(tokens / duration, 2),
        requests_per_s=round(len(ok) / duration, 3),
        ttft_ms=_pcts([r.ttft for r in ok if r.ttft is not None]),
        tpot_ms=_pcts([t for r in ok if (t := r.tpot) is not None]),
        itl_ms=_pcts([x for r in ok for x in r.itls]),
        e2e_ms=_pcts([r.e2e for r in ok]),
        first_error=errors[0].error if errors else None,
    )
