"""Shared state's cost per request: the gateway with its state on this machine (SQLite audit log,
per-key windows and response cache in memory) vs shared by several gateways (audit log in
PostgreSQL, windows and cache in Valkey/Redis), both servers real and on this machine.

    .venv/bin/python benchmarks/bench_shared_state.py [--quick]

The engine answers at once from memory (a scripted 64-word answer), so what is measured is the
gateway's own work: a key with limits (admission and settlement), a cache lookup and store (every
prompt differs: all misses), and the audit row. Rounds alternate local and shared; the median
round is reported. Target: <= 2 ms added to the time to first token at p50, which on a real
model's answer (docs/benchmarks.md, serve) is what keeps >= 95% of its tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from report import finish, machine_line  # noqa: E402

from serve_helpers import ScriptedEngine, ServerProcess  # noqa: E402
from slmkit.serve.bench import run_bench  # noqa: E402
from state_servers import postgres_bin, start_cache_server, start_postgres  # noqa: E402

WORDS = tuple(f" w{i}" for i in range(64))
CONCURRENCY = 8
KEY = "sk-bench"


async def _round(settings: dict[str, Any], requests: int, concurrency: int) -> dict[str, float]:
    import httpx

    from slmkit.serve.app import create_app
    from slmkit.serve.config import ServeConfig
    from slmkit.serve.gateway import Gateway

    gateway = Gateway(ServeConfig.model_validate(settings), {"m": ScriptedEngine("m", WORDS)})
    await gateway.start()
    ttfts: list[float] = []
    transport = httpx.ASGITransport(app=create_app(gateway))
    headers = {"Authorization": f"Bearer {KEY}"}
    counter = iter(range(requests))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def worker() -> None:
                for i in counter:
                    body = {
                        "model": "m",
                        "messages": [{"role": "user", "content": f"question {i} {time.time()}"}],
                        "temperature": 0,
                        "stream": True,
                    }
                    started = time.perf_counter()
                    async with client.stream(
                        "POST", "/v1/chat/completions", json=body, headers=headers
                    ) as response:
                        assert response.status_code == 200, await response.aread()
                        first = None
                        async for _ in response.aiter_bytes():
                            first = first or time.perf_counter()
                    ttfts.append((first or time.perf_counter()) - started)

            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            wall = time.perf_counter() - began
    finally:
        await gateway.stop()
    ttfts.sort()
    return {
        "p50_ms": 1000 * ttfts[len(ttfts) // 2],
        "p95_ms": 1000 * ttfts[int(len(ttfts) * 0.95)],
        "requests_per_s": requests / wall,
    }


RELOAD_S = 1.0  # the alias engines' polling interval in the promotion measurement


def promotion_lags(url: str, home: Path, promotions: int) -> list[float]:
    """Seconds from `promote` on one registry handle until both gateways' alias engines serve
    the new version (instant engines: the lag is the polling's alone)."""
    from slmkit.registry.store import Registry
    from slmkit.serve.engines.alias import AliasEngine

    registry = Registry(url)
    for i in range(promotions + 1):
        (home / f"v{i}").mkdir()
        registry.register(home / f"v{i}", "model")
    registry.promote("v1", "support")

    def build(version: Any) -> ScriptedEngine:
        return ScriptedEngine("support", (version.id,))

    async def measure() -> list[float]:
        engines = [
            AliasEngine("support", "@support", build, registry=Registry(url), reload_s=RELOAD_S)
            for _ in range(2)
        ]
        lags = []
        for engine in engines:
            await engine.start()
        try:
            for n in range(2, promotions + 2):
                await asyncio.sleep(RELOAD_S * 0.37)  # promotions land anywhere in the interval
                await asyncio.to_thread(registry.promote, f"v{n}", "support")
                moved = time.perf_counter()
                while any(e.version != f"v{n}" for e in engines):
                    await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - moved)
        finally:
            for engine in engines:
                await engine.stop()
            registry.close()
        return lags

    return asyncio.run(measure())


def model_rounds(base: dict[str, Any], shared: dict[str, Any], quick: bool) -> dict[str, Any]:
    """Two `slm serve default` (the embedded model on llama.cpp), one on each kind of state, the
    same streamed load on each in turn: what shared state costs on a real model's answers."""
    from bench_serve import server_env

    env = {**server_env(Path(tempfile.mkdtemp(prefix="slm-bench-home-"))), "BENCH_KEY": KEY}
    no_cache = {"cache": {"enabled": False}}  # the prompts repeat: every answer is generated
    configs = {"local": {**base, **no_cache}, "shared": {**shared, **no_cache}}
    results: dict[str, list[dict[str, Any]]] = {}
    servers = {name: ServerProcess(["default"], config=c, env=env) for name, c in configs.items()}
    try:
        for server in servers.values():
            server.start()
        for streams, requests in ((1, 6 if quick else 12), (8, 16 if quick else 32)):
            for _ in range(2):
                for name, server in servers.items():
                    report = asyncio.run(
                        run_bench(
                            server.base_url + "/v1",
                            "default",
                            concurrency=streams,
                            requests=requests,
                            max_tokens=48,
                            api_key=KEY,
                        )
                    )
                    results.setdefault(f"{name}_{streams}", []).append(report.to_dict())
    finally:
        for server in servers.values():
            server.stop()
    return results


def run(quick: bool) -> dict[str, Any]:
    requests, rounds = (120, 3) if quick else (400, 5)
    bindir = postgres_bin()
    if bindir is None:
        raise SystemExit("PostgreSQL not found: run scripts/setup.sh")
    os.environ["BENCH_KEY"] = KEY
    home = Path(tempfile.mkdtemp(prefix="slm-bench-state-"))
    postgres = start_postgres(bindir)
    try:
        with start_cache_server(home / "cache") as cache:
            base: dict[str, Any] = {
                "keys": [{"name": "bench", "key_env": "BENCH_KEY", "rpm": 10**6, "tpm": 10**9}],
                "cache": {"enabled": True},
                "audit": {"path": str(home / "audit.db")},
            }
            shared = {
                **base,
                "state": {"database": postgres.create_database(), "cache": cache.url()},
            }
            results: dict[str, list[dict[str, float]]] = {
                f"{state}_{n}": [] for state in ("local", "shared") for n in (1, CONCURRENCY)
            }
            for _ in range(rounds):
                for n in (1, CONCURRENCY):
                    results[f"local_{n}"].append(asyncio.run(_round(base, requests, n)))
                    results[f"shared_{n}"].append(asyncio.run(_round(shared, requests, n)))
            lags = promotion_lags(postgres.create_database(), home, 4 if quick else 10)
            model = model_rounds(base, shared, quick)
    finally:
        postgres.stop()
    return {
        "machine": machine_line(),
        "requests": requests,
        "rounds": rounds,
        "promotion_lags_s": lags,
        "model": model,
        **results,
    }


def _median(rounds: list[dict[str, float]], name: str) -> float:
    return statistics.median(r[name] for r in rounds)


def summarize(results: dict[str, Any]) -> str:
    rows, added, ratio = [], {}, {}
    lags = results["promotion_lags_s"]
    for n in (1, CONCURRENCY):
        local, shared = results[f"local_{n}"], results[f"shared_{n}"]
        for label, rounds in (
            ("this machine (SQLite, memory)", local),
            ("shared (PostgreSQL, Valkey/Redis)", shared),
        ):
            rows.append(
                f"| {n} | {label} | {_median(rounds, 'p50_ms'):.2f} | {_median(rounds, 'p95_ms'):.2f} "
                f"| {_median(rounds, 'requests_per_s'):.0f} |"
            )
        added[n] = _median(shared, "p50_ms") - _median(local, "p50_ms")
        ratio[n] = _median(shared, "requests_per_s") / _median(local, "requests_per_s")
    return "\n".join(
        [
            f"Machine: {results['machine']}. {results['requests']} streamed requests a round, a key "
            "with limits, the cache on (all misses), the engine answering 64 words from memory "
            f"(no model: the gateway's own work only); median of {results['rounds']} rounds each. "
            "The servers run on the same 2 cores as the gateway.",
            "",
            "| clients | state | latency p50 ms | latency p95 ms | requests/s |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"One client: shared state adds **{added[1]:.2f} ms** per request at p50 (target <= 2 ms "
            f"of TTFT). {CONCURRENCY} clients: **{added[CONCURRENCY]:.2f} ms**, "
            f"**{100 * ratio[CONCURRENCY]:.1f}%** of the gateway's own request rate.",
            "",
            *_model_rows(results["model"]),
            "",
            f"A promotion (`slm models promote` on the shared registry) is served by both of two "
            f"gateways after {statistics.mean(lags):.2f} s on average, {max(lags):.2f} s at most, "
            f"over {len(lags)} promotions with aliases polling every {RELOAD_S:.0f} s (`reload_s`; "
            "the lag is at most one interval plus the new version's start).",
        ]
    )


def _model_rows(model: dict[str, Any]) -> list[str]:
    """The real model's table: tokens/s and TTFT p50, local vs shared, at 1 and 8 streams."""
    rows = [
        "On the embedded model (two `slm serve default`, llama.cpp, 48 streamed tokens a request, "
        "a key with limits, the cache off, means of 2 alternating runs):",
        "",
        "| streams | local tok/s | shared tok/s | shared / local | local TTFT p50 ms | shared TTFT p50 ms | added ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for streams in (1, 8):
        local, shared = model[f"local_{streams}"], model[f"shared_{streams}"]
        l_tps = statistics.mean(r["tokens_per_s"] for r in local)
        s_tps = statistics.mean(r["tokens_per_s"] for r in shared)
        l_ttft = statistics.mean(r["ttft_ms"]["p50"] for r in local)
        s_ttft = statistics.mean(r["ttft_ms"]["p50"] for r in shared)
        rows.append(
            f"| {streams} | {l_tps:.1f} | {s_tps:.1f} | **{s_tps / l_tps:.1%}** | {l_ttft:.1f} "
            f"| {s_ttft:.1f} | **{s_ttft - l_ttft:+.1f}** |"
        )
    rows += ["", "Targets: >= 95% of the local tokens/s, <= 2 ms added TTFT p50."]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    args = parser.parse_args()
    finish("shared_state", run(args.quick), summarize)


if __name__ == "__main__":
    main()
