"""Router overhead: a route over a 2-replica pool (the gateway picks the replica) vs the same two
llama-server children hit directly, clients split evenly between them, at 8 streams.

    .venv/bin/python benchmarks/bench_router.py [--quick]

Target (issue 15): the routed path keeps >= 95% of direct tokens/s. A third row routes through
the same pool with an escalation check on, so streams are held until the check passes: same
throughput, but the time to first token becomes the whole answer's time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from bench_serve import server_env  # noqa: E402
from report import finish, machine_line  # noqa: E402

from serve_helpers import ServerProcess  # noqa: E402
from slmkit.serve.bench import BenchReport, run_bench  # noqa: E402

MAX_TOKENS = 48
STREAMS = 8
CONFIG: dict[str, Any] = {
    "models": [
        {"id": "pool", "ref": "default", "replicas": 2},
        {"id": "spare", "ref": "default"},  # the next chain member (never asked here)
    ],
    "routes": [
        {"id": "support", "chain": ["pool"]},
        {
            "id": "checked",
            "chain": ["pool", "spare"],
            "escalate": {"must_not_include": ["as an AI"]},
        },
    ],
    "llamacpp": {"ctx_size": 4096, "parallel": STREAMS // 2, "threads": 1},
    "audit": {"enabled": True},
}


def child_urls(server: ServerProcess) -> list[str]:
    """The pool's two llama-server children (their `-a` alias is the model id)."""
    urls = []
    for child in server.engine_children():
        cmd = child.cmdline()
        if cmd[cmd.index("-a") + 1] == "pool":
            urls.append(f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}/v1")
    return sorted(urls)


async def _direct(urls: list[str], requests: int) -> dict[str, Any]:
    """Both children at once, half the streams and requests each (the ideal balancer)."""
    reports = await asyncio.gather(
        *(
            run_bench(
                url,
                "default",
                concurrency=STREAMS // len(urls),
                requests=requests // len(urls),
                max_tokens=MAX_TOKENS,
            )
            for url in urls
        )
    )
    return _merge(reports)


def _merge(reports: list[BenchReport]) -> dict[str, Any]:
    duration = max(r.duration_s for r in reports)
    tokens = sum(r.output_tokens for r in reports)
    ttft = [r.ttft_ms["p50"] for r in reports if r.ttft_ms["p50"] is not None]
    return {
        "tokens_per_s": tokens / duration,
        "ttft_p50_ms": sum(ttft) / len(ttft) if ttft else None,
        "errors": sum(r.errors for r in reports),
    }


async def _routed(base_url: str, model: str, requests: int) -> dict[str, Any]:
    report = await run_bench(
        base_url, model, concurrency=STREAMS, requests=requests, max_tokens=MAX_TOKENS
    )
    return _merge([report])


def run(quick: bool) -> dict[str, Any]:
    requests = 16 if quick else 48
    results: dict[str, Any] = {"direct": [], "pool": [], "routed": [], "checked": []}
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess([], config=CONFIG, env=server_env(Path(tmp))) as server,
    ):
        gateway, urls = server.base_url + "/v1", child_urls(server)
        assert len(urls) == 2, urls
        asyncio.run(_routed(gateway, "support", 8))  # warm-up
        asyncio.run(_direct(urls, 8))
        for _ in range(2):  # alternate, so drift in machine load hits both sides alike
            results["direct"].append(asyncio.run(_direct(urls, requests)))
            results["pool"].append(asyncio.run(_routed(gateway, "pool", requests)))
            results["routed"].append(asyncio.run(_routed(gateway, "support", requests)))
            results["checked"].append(asyncio.run(_routed(gateway, "checked", requests)))
        results["replica_requests"] = {
            name: server.metric(
                "slm_replica_requests_total", model="pool", replica=name, outcome="ok"
            )
            for name in ("llamacpp-0", "llamacpp-1")
        }
    results["load_average"] = round(os.getloadavg()[0], 1)
    return results


def _mean(runs: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


def summarize(results: dict[str, Any]) -> str:
    direct_tps = _mean(results["direct"], "tokens_per_s")
    direct_ttft = _mean(results["direct"], "ttft_p50_ms")
    rows = []
    for key, label in (
        ("direct", "direct: both llama-server children, streams split evenly"),
        ("pool", "model `pool`: the gateway balances the 2 replicas (least-busy)"),
        ("routed", "route `support` → `pool`"),
        ("checked", "route `checked` → `pool`, then `spare` (a check on: streams held)"),
    ):
        tps, ttft = _mean(results[key], "tokens_per_s"), _mean(results[key], "ttft_p50_ms")
        errors = sum(r["errors"] for r in results[key])
        rows.append(
            f"| {label} | {tps:.1f} | **{tps / direct_tps:.1%}** | {ttft:.0f} | "
            f"{ttft - direct_ttft:+.0f} | {errors} |"
        )
    split = results["replica_requests"]
    return "\n".join(
        [
            "## Router overhead (`benchmarks/bench_router.py`)",
            "",
            f"Machine: {machine_line()}. Model: embedded SmolLM2-135M-Instruct Q4_1, one gateway with "
            f"`replicas: 2` (two llama-server children, `-np {STREAMS // 2} -t 1` each), "
            f"{STREAMS} streams, {MAX_TOKENS} output tokens per request, temperature 0; means of 2 "
            "alternating runs.",
            "",
            "| path | tok/s | vs direct | TTFT p50 ms | added TTFT ms | errors |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Requests per replica through the pool (`slm_replica_requests_total`, ok): "
            f"{', '.join(f'{k} {v:.0f}' for k, v in split.items())}.",
            "",
            "Target: the routed path keeps >= 95% of direct tokens/s. A held stream (any escalation "
            "check on) sends nothing until the answer passed, so its TTFT is the whole answer's time.",
            "",
            f"1-minute load average at the end of the run: {results['load_average']} on "
            f"{os.cpu_count()} cores.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests (for a smoke run)")
    args = parser.parse_args()
    finish("router", run(args.quick), summarize)


if __name__ == "__main__":
    main()
