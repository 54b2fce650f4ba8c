"""Serving benchmark: the slm gateway vs the same llama-server hit directly (1 and 8 streams),
vs a naive FastAPI + `model.generate` endpoint (8 concurrent clients), and cold start to ready.

    .venv/bin/python benchmarks/bench_serve.py [--quick]

Targets (issue 7): gateway >= 95% of direct tokens/s, <= 10 ms added TTFT p50; >= 10x the naive
endpoint at 8 streams; cold start < 5 s for the llama.cpp engine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from report import finish, machine_line  # noqa: E402

from serve_helpers import ServerProcess, free_port  # noqa: E402
from slmkit.paths import models_cache_dir, tools_dir  # noqa: E402
from slmkit.serve.bench import DEFAULT_PROMPTS, BenchReport, run_bench  # noqa: E402

MAX_TOKENS = 64
CONFIG = {
    "llamacpp": {"ctx_size": 8192, "parallel": 8},
    "audit": {"enabled": True},
}  # default threads: all cores

NAIVE_APP = """
import sys, time, torch
from fastapi import FastAPI
from pydantic import BaseModel
from slmkit.models.load import load_model
from slmkit.models.chat import render_chat_prompt

model, tokenizer = load_model("default")
app = FastAPI()

class Req(BaseModel):
    prompt: str
    max_tokens: int = 64

@app.post("/generate")
async def generate(req: Req):  # the seed's endpoint: generate() on the event loop, one at a time
    text = render_chat_prompt(tokenizer, [{"role": "user", "content": req.prompt}])
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=req.max_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    new = out[0, inputs["input_ids"].shape[1]:]
    return {"text": tokenizer.decode(new, skip_special_tokens=True), "tokens": int(new.numel())}
"""


def server_env(home: Path) -> dict[str, str]:
    """A private SLM_HOME (audit log) that still sees the shared tool and model caches."""
    return {
        "SLM_HOME": str(home),
        "SLM_TOOLS_DIR": str(tools_dir()),
        "SLM_MODEL_CACHE": str(models_cache_dir()),
    }


def engine_url(server: ServerProcess) -> str:
    (child,) = server.engine_children()
    cmd = child.cmdline()
    return f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}/v1"


def bench(url: str, concurrency: int, requests: int) -> BenchReport:
    return asyncio.run(
        run_bench(url, "default", concurrency=concurrency, requests=requests, max_tokens=MAX_TOKENS)
    )


def cold_start(home: Path) -> float:
    start = time.perf_counter()
    with ServerProcess(["default"], config=CONFIG, env=server_env(home)):
        return time.perf_counter() - start


async def _naive_load(url: str, concurrency: int, requests: int) -> tuple[int, float, int]:
    todo = list(range(requests))
    tokens = errors = 0
    async with httpx.AsyncClient(timeout=600) as client:

        async def worker() -> None:
            nonlocal tokens, errors
            while todo:
                i = todo.pop()
                r = await client.post(
                    url,
                    json={
                        "prompt": DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)],
                        "max_tokens": MAX_TOKENS,
                    },
                )
                if r.status_code == 200:
                    tokens += r.json()["tokens"]
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tokens, time.perf_counter() - start, errors


def naive_baseline(concurrency: int, requests: int) -> dict[str, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        app_file = Path(tmp) / "naive_app.py"
        app_file.write_text(NAIVE_APP)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "naive_app:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=tmp,
            env={**os.environ, "PYTHONPATH": tmp},
        )
        try:
            for _ in range(600):
                if proc.poll() is not None:
                    raise RuntimeError("naive server exited")
                try:
                    httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.2)
            tokens, duration, errors = asyncio.run(
                _naive_load(f"http://127.0.0.1:{port}/generate", concurrency, requests)
            )
        finally:
            proc.terminate()
            proc.wait(20)
    return {
        "tokens_per_s": tokens / duration,
        "errors": errors,
        "tokens": tokens,
        "duration_s": duration,
    }


def run(quick: bool) -> dict[str, object]:
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        results["cold_start_s"] = [round(cold_start(home), 2) for _ in range(2)]
        with ServerProcess(["default"], config=CONFIG, env=server_env(home)) as server:
            gateway, direct = server.base_url + "/v1", engine_url(server)
            bench(gateway, 2, 4)  # warm-up (prompt cache, connections)
            bench(direct, 2, 4)
            for streams, requests in ((1, 6 if quick else 12), (8, 16 if quick else 48)):
                pairs = [
                    (bench(direct, streams, requests), bench(gateway, streams, requests))
                    for _ in range(2)
                ]
                results[f"direct_{streams}"] = [p[0].to_dict() for p in pairs]
                results[f"gateway_{streams}"] = [p[1].to_dict() for p in pairs]
    results["naive_8"] = naive_baseline(8, 8 if quick else 16)
    results["load_average"] = round(os.getloadavg()[0], 1)
    return results


def summarize(results: dict[str, object]) -> str:
    rows = []
    for streams in (1, 8):
        direct, gateway = results[f"direct_{streams}"], results[f"gateway_{streams}"]
        d_tps = sum(r["tokens_per_s"] for r in direct) / len(direct)
        g_tps = sum(r["tokens_per_s"] for r in gateway) / len(gateway)
        d_ttft = sum(r["ttft_ms"]["p50"] for r in direct) / len(direct)
        g_ttft = sum(r["ttft_ms"]["p50"] for r in gateway) / len(gateway)
        errors = f"{sum(r['errors'] for r in direct)} / {sum(r['errors'] for r in gateway)}"
        rows.append(
            f"| {streams} | {d_tps:.1f} | {g_tps:.1f} | **{g_tps / d_tps:.1%}** | {d_ttft:.1f} | {g_ttft:.1f} | "
            f"**{g_ttft - d_ttft:+.1f}** | {gateway[0]['tpot_ms']['p50']} | {gateway[0]['itl_ms']['p95']} | {errors} |"
        )
    naive = results["naive_8"]
    g8 = sum(r["tokens_per_s"] for r in results["gateway_8"]) / len(results["gateway_8"])
    cold = results["cold_start_s"]
    return "\n".join(
        [
            "## Serving (`benchmarks/bench_serve.py`)",
            "",
            f"Machine: {machine_line()}. Model: embedded SmolLM2-135M-Instruct Q4_1, llama-server `-c 8192 -np 8` with its default threads (all cores), "
            f"{MAX_TOKENS} output tokens per request, streaming, temperature 0. Direct = the gateway's own llama-server "
            "child hit on its private port, same run, same load; figures are means of 2 alternating runs.",
            "",
            "| streams | direct tok/s | gateway tok/s | gateway / direct | direct TTFT p50 ms | gateway TTFT p50 ms | added TTFT ms | gateway TPOT p50 ms | gateway ITL p95 ms | errors direct / gateway |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Naive FastAPI + `model.generate` (fp32, requests serialised), 8 concurrent clients: "
            f"{naive['tokens_per_s']:.1f} tok/s ({naive['errors']} errors). Gateway at 8 streams: {g8:.1f} tok/s = "
            f"**{g8 / naive['tokens_per_s']:.1f}x**.",
            "",
            f"Cold start of `slm serve default` to a healthy `/health` (cached model, llama.cpp engine): "
            f"{', '.join(f'{c:.2f} s' for c in cold)}.",
            "",
            "Targets: >= 95% of direct tokens/s and <= 10 ms added TTFT p50; >= 10x naive; cold start < 5 s.",
            "",
            f"1-minute load average at the end of the run: {results.get('load_average', '?')} on "
            f"{os.cpu_count()} cores (other jobs shared the machine; runs under load are noisy, so compare "
            "the ratios of one run).",
            *_error_notes(results),
        ]
    )


def _error_notes(results: dict[str, object]) -> list[str]:
    notes = []
    for key, runs in results.items():
        if isinstance(runs, list):
            notes += [
                f"Error in `{key}`: {r['first_error']}"
                for r in runs
                if isinstance(r, dict) and r.get("first_error")
            ]
    return ["", *notes] if notes else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests (for a smoke run)")
    args = parser.parse_args()
    finish("serve", run(args.quick), summarize)


if __name__ == "__main__":
    main()
