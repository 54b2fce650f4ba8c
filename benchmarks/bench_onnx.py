"""Deployment routes on one CPU box: llama.cpp GGUF (q8_0, q4_k_m) vs ONNX Runtime GenAI (fp32, int8,
int4) of the same tuned model, each served by `slm serve` (llamacpp / onnx engine) and measured in
one run: output tokens/s at 1 and 4 concurrent streams, peak RSS of the whole serving process tree
(gateway + engine), size on disk, fact recall on the demo eval set, and for ONNX the quant eval
against PyTorch fp32 (KLD, top-1 agreement, perplexity ratio). Ratios are against llama.cpp q8_0.

    python benchmarks/bench_onnx.py                       # trains the demo SFT model first (~10 min)
    python benchmarks/bench_onnx.py --from-run runs/demo  # reuse a tuned run folder
    python benchmarks/bench_onnx.py --max-items 20        # fewer eval questions (faster)
    python benchmarks/bench_onnx.py --from-run default    # the untuned embedded model (no training)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from bench_serve import server_env  # noqa: E402
from report import finish, machine_line, write_section  # noqa: E402

from serve_helpers import ServerProcess  # noqa: E402
from slmkit.serve.bench import run_bench  # noqa: E402

EVAL = REPO / "examples" / "data" / "support_eval.jsonl"
MAX_TOKENS = 64
RECALL_TOKENS = 48  # as recipes/demo.yaml's evaluate.max_tokens
GGUF_LEVELS = ("q8_0", "q4_k_m")
ONNX_LEVELS = ("fp32", "int8", "int4")
HELDOUT_CHARS = 6500


def tuned_run(from_run: str | None, tmp: Path) -> str:
    """The model: a given run folder (or any model reference), else the demo recipe's SFT stage
    trained now."""
    if from_run is not None:
        return str(Path(from_run).resolve()) if Path(from_run).exists() else from_run
    run = tmp / "demo-sft"
    cmd = [sys.executable, "-m", "slmkit.cli", "train", str(REPO / "recipes" / "demo.yaml")]
    subprocess.run([*cmd, "--set", f"output_dir={run}"], check=True, cwd=REPO)
    return str(run)


def slm(*args: str) -> str:
    """The real CLI; returns what it printed (stdout + stderr) for the doc."""
    cmd = [sys.executable, "-m", "slmkit.cli", *args]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stderr + done.stdout


def export_routes(run: str, tmp: Path, max_items: int) -> tuple[dict[str, Path], dict[str, Any]]:
    """Both exports of the same run through `slm export`; {route: path} and the ONNX export facts."""
    gguf, onnx = tmp / "gguf", tmp / "onnx"
    start = time.perf_counter()
    slm("export", str(run), "--quant", ",".join(GGUF_LEVELS), "--skip-eval", "-o", str(gguf))
    gguf_s = time.perf_counter() - start
    heldout = tmp / "heldout.txt"  # the first ~6 chunks of 256 tokens: the eval is the slow part
    heldout.write_text((REPO / "examples" / "data" / "heldout.txt").read_text()[:HELDOUT_CHARS])
    onnx_args = ["--format", "onnx", "--precision", ",".join(ONNX_LEVELS), "--prompts", str(EVAL)]
    onnx_args += ["--heldout", str(heldout)]
    start = time.perf_counter()
    log = slm(
        "export", str(run), *onnx_args, "--max-prompts", str(min(max_items, 12)), "-o", str(onnx)
    )
    onnx_s = time.perf_counter() - start
    routes: dict[str, Path] = {}
    for folder, prefix in ((gguf, "llama.cpp"), (onnx, "ONNX")):
        for f in json.loads((folder / "export.json").read_text())["files"]:
            level = f["level"].removeprefix("onnx-")
            if level in GGUF_LEVELS + ONNX_LEVELS:
                routes[f"{prefix} {level}"] = folder / f["file"]
    report = json.loads((onnx / "report.json").read_text())["quant_eval"]
    facts = {
        "levels": {lv["level"]: lv for lv in report["levels"]},
        "reference_ppl": report["reference"]["kld"]["ppl"],
        "export_log": log,
        "export_s": {"gguf (no eval)": gguf_s, "onnx (with eval)": onnx_s},
    }
    return routes, facts


class PeakRss:
    """Samples the RSS of a process and its children every 0.2 s; `peak_mb` is the highest sum."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                continue

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def recall(server: ServerProcess, items: list[Any]) -> tuple[float, float]:
    """Fact recall (temperature 0) on the eval items, one request at a time; and its tokens/s."""
    from slmkit.evaluate import scoring

    client = server.client()
    scores, tokens, start = [], 0, time.perf_counter()
    for item in items:
        reply = client.chat.completions.create(
            model="m", messages=item.messages, max_tokens=RECALL_TOKENS, temperature=0
        )
        tokens += reply.usage.completion_tokens if reply.usage else 0
        answer = reply.choices[0].message.content or ""
        scores.append(scoring.score_answer(item, answer).fact_recall)
    known = [s for s in scores if s is not None]
    return sum(known) / max(len(known), 1), tokens / (time.perf_counter() - start)


def streams(server: ServerProcess, concurrency: int, requests: int) -> dict[str, Any]:
    report = asyncio.run(
        run_bench(
            server.base_url + "/v1",
            "m",
            concurrency=concurrency,
            requests=requests,
            max_tokens=MAX_TOKENS,
        )
    )
    return {"tok_s": report.tokens_per_s, "errors": report.errors, "ttft_ms": report.ttft_ms}


def measure(route: str, path: Path, items: list[Any], home: Path, threads: int) -> dict[str, Any]:
    engine = "onnx" if route.startswith("ONNX") else "llamacpp"
    config = {"llamacpp": {"parallel": 4, "threads": threads}}
    with ServerProcess(
        ["--model", f"m={path}", "--engine", engine], config=config, env=server_env(home)
    ) as server:
        assert server.proc is not None
        rss = PeakRss(server.proc.pid)
        fact_recall, recall_tok_s = recall(server, items)
        one = streams(server, 1, 4)
        four = streams(server, 4, 8)
        peak = rss.stop()
    size = sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size
    return {
        "engine": engine,
        "size_mb": size / 2**20,
        "fact_recall": fact_recall,
        "recall_tok_s": recall_tok_s,
        "tok_s_1": one["tok_s"],
        "tok_s_4": four["tok_s"],
        "ttft_ms_1": one["ttft_ms"]["p50"],
        "errors": one["errors"] + four["errors"],
        "peak_rss_mb": peak,
    }


def run(from_run: str | None, max_items: int) -> dict[str, Any]:
    from slmkit.evaluate.evalset import load_eval_set
    from slmkit.tools import default_threads

    items = load_eval_set(EVAL)[:max_items]
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        run_dir = tuned_run(from_run, tmp)
        train_s = time.perf_counter() - start
        routes, onnx_facts = export_routes(run_dir, tmp, max_items)
        threads = default_threads()
        results = {
            route: measure(route, path, items, tmp / "home", threads)
            for route, path in routes.items()
        }
    return {
        "machine": machine_line(),
        "run": str(from_run or "demo SFT trained in this run"),
        "train_s": train_s if from_run is None else None,
        "items": len(items),
        "routes": results,
        "onnx_quant_eval": onnx_facts["levels"],
        "reference_ppl": onnx_facts["reference_ppl"],
        "export_s": onnx_facts["export_s"],
        "onnx_export_log": onnx_facts["export_log"],
        "threads": threads,
        "runtime": _versions(),
    }


def _versions() -> dict[str, str]:
    from slmkit.export.onnx import runtime_versions
    from slmkit.tools import tool_version

    return {**runtime_versions(), "llama.cpp": tool_version("llama-server")}


def summarize(results: dict[str, Any]) -> str:
    routes = results["routes"]
    base = routes["llama.cpp q8_0"]
    rows = []
    for name, r in routes.items():
        q = (
            results["onnx_quant_eval"].get("onnx-" + name.split()[-1])
            if r["engine"] == "onnx"
            else None
        )
        agree = (
            f"{q['kld']['same_top1']:.1%} / {q['kld']['mean_kld']:.3f} / {q['kld']['ppl_ratio']:.3f}"
            if q and q.get("kld")
            else "(vs f16 GGUF: see export section)"
        )
        rows.append(
            f"| {name} | {r['size_mb']:.0f} | {r['tok_s_1']:.1f} ({r['tok_s_1'] / base['tok_s_1']:.2f}×) "
            f"| {r['tok_s_4']:.1f} ({r['tok_s_4'] / base['tok_s_4']:.2f}×) "
            f"| {r['peak_rss_mb']:.0f} ({r['peak_rss_mb'] / base['peak_rss_mb']:.2f}×) "
            f"| {r['fact_recall']:.3f} | {agree} | {r['errors']} |"
        )
    table = "\n".join(rows)
    v = results["runtime"]
    verdict = "\n".join(f"- {line}" for line in winners(routes))
    return f"""## Deployment routes: llama.cpp GGUF vs ONNX Runtime (`benchmarks/bench_onnx.py`)

Machine: {results["machine"]}; llama.cpp {v["llama.cpp"]}, onnxruntime {v["onnxruntime"]},
onnxruntime-genai {v["onnxruntime-genai"]}. Model: {results["run"]} (the same merged model for every
route). Each route served by `slm serve` (llamacpp engine with 4 slots, or the onnx engine), one at a
time; tokens/s = output tokens per second of wall time over streamed requests of {MAX_TOKENS} tokens
(1 stream: 4 requests; 4 streams: 8 requests), peak RSS of the gateway and its engine together,
fact recall on the first {results["items"]} demo eval questions (temperature 0, {RECALL_TOKENS} tokens).
ONNX agreement = top-1 agreement / mean KLD / perplexity ratio against the PyTorch fp32 model on
the first {HELDOUT_CHARS} characters of `examples/data/heldout.txt`. Ratios in brackets are against llama.cpp q8_0. The machine was shared with other
jobs while this ran: absolute numbers are low and noisy; compare within the table.

| route | size MiB | tok/s 1 stream | tok/s 4 streams | peak RSS MiB | fact recall | ONNX top-1 / KLD / PPL ratio | errors |
|---|---|---|---|---|---|---|---|
{table}

{untuned_note(results)}Who wins where (this run, computed from the table):

{verdict}

ONNX export time (with its eval against PyTorch): {results["export_s"]["onnx (with eval)"]:.0f} s;
GGUF export without eval: {results["export_s"]["gguf (no eval)"]:.0f} s.
"""


def untuned_note(results: dict[str, Any]) -> str:
    if results["run"] != "default":
        return ""
    return (
        "This run used the untuned embedded model (`--from-run default`): training the demo model "
        "did not fit the time on the shared machine, so fact recall on the shop's questions is near "
        "zero for every route and does not separate them; the held-out agreement column does.\n\n"
    )


def winners(routes: dict[str, dict[str, Any]]) -> list[str]:
    """Plain sentences: the best route per measure, and how far the best of the other runtime is."""

    def best(key: str, high: bool) -> str:
        def pick(names: list[str]) -> str:
            return (max if high else min)(names, key=lambda n: routes[n][key])

        top = pick(list(routes))
        other = pick([n for n in routes if routes[n]["engine"] != routes[top]["engine"]])
        a, b = routes[top][key], routes[other][key]
        ratio = f", {b / a:.2f}×" if a else ""
        return f"{top} ({a:.3g}; best of the other runtime: {other}, {b:.3g}{ratio})"

    return [
        f"one stream, output tok/s: {best('tok_s_1', True)}",
        f"four streams, aggregate tok/s: {best('tok_s_4', True)}",
        f"least peak memory (MB): {best('peak_rss_mb', False)}",
        f"smallest on disk (MB): {best('size_mb', False)}",
        f"fact recall: {best('fact_recall', True)}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--from-run",
        default=None,
        help="A tuned run folder to reuse (or `default`: the untuned model).",
    )
    parser.add_argument("--max-items", type=int, default=59, help="Demo eval questions to score.")
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="Only rewrite the doc section from saved results.",
    )
    args = parser.parse_args()
    if args.from_json is not None:
        write_section("onnx", summarize(json.loads(args.from_json.read_text())))
        return
    finish("onnx", run(args.from_run, args.max_items), summarize)


if __name__ == "__main__":
    main()
