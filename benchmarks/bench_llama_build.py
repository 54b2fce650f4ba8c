"""llama.cpp build benchmark: does the AMX-free build set-up installs keep the native build's speed?

Builds (once, cached under `$SLM_HOME/build/`) the plain `-DGGML_NATIVE=ON` build set-up used
before (AMX compiled in where the CPU advertises it) and the `portable` fallback (AVX2, no
AVX-512), then measures, in one run and on the same machine, prompt and decode tokens/s of each
against the installed build on the embedded GGUF (SmolLM2-135M Q4_1). The baseline is the plain
native build; ratios are installed/baseline.

    python benchmarks/bench_llama_build.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine_line, write_section

PROMPT = " ".join(
    "Customer support answers questions about orders, refunds, delivery times and accounts."
    for _ in range(16)
)


def measure(binary: Path, gguf: Path, tokens: int) -> tuple[float, float]:
    """(prompt tok/s, decode tok/s) of one greedy completion with a cold prompt cache."""
    from slmkit.export.llama_server import LlamaServerProcess

    with LlamaServerProcess(gguf, ctx=1024, binary=binary) as server:
        body = {"prompt": PROMPT, "n_predict": tokens, "temperature": 0, "cache_prompt": False}
        timings = server._post("/completion", body)["timings"]
    return float(timings["prompt_per_second"]), float(timings["predicted_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="Alternating rounds per build.")
    parser.add_argument("--tokens", type=int, default=128, help="Tokens decoded per round.")
    args = parser.parse_args()
    from slmkit.export.llama_server import decode_check
    from slmkit.models.embedded import embedded_gguf_path
    from slmkit.paths import LLAMA_CPP_PYTHON_VERSION, slm_home, tools_dir
    from slmkit.tools_build import CONFIG_BY_NAME, compile_config, installed_build

    gguf = embedded_gguf_path()
    work = slm_home() / "build" / f"lcp-{LLAMA_CPP_PYTHON_VERSION}"
    src = work / "src" / "vendor" / "llama.cpp"
    stamp = installed_build(tools_dir())
    installed = str(stamp["config"]) if stamp else "unknown"
    builds = {f"installed ({installed})": tools_dir() / "bin" / "llama-server"}
    for name in ("native-amx", "portable"):
        print(f"building {name} (cached after the first run; log in {work}/build-{name}.log)")
        bin_dir = compile_config(CONFIG_BY_NAME[name], src, work)
        check = decode_check(gguf, binary=bin_dir / "llama-server")
        print(f"  {name}: {check.detail}")
        if check.ok:
            builds[name] = bin_dir / "llama-server"
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in builds}
    for i in range(args.rounds):
        for name, binary in builds.items():
            results[name].append(measure(binary, gguf, args.tokens))
        print(f"round {i + 1}/{args.rounds} done")
    medians = {
        name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
        for name, rs in results.items()
    }
    base = medians.get("native-amx")
    lines = [
        "## llama.cpp build (`benchmarks/bench_llama_build.py`)",
        "",
        f"Measured on {machine_line()}. Embedded SmolLM2-135M Q4_1, {len(PROMPT.split())}-word "
        f"prompt, {args.tokens} decoded tokens, greedy; median of {args.rounds} alternating "
        "rounds, every core. Baseline: the plain `-DGGML_NATIVE=ON` build set-up made before "
        "AMX was compiled out. A build that crashes here is listed as such.",
        "",
        "| build | prompt tok/s | decode tok/s | decode vs baseline |",
        "|---|---|---|---|",
    ]
    for name, (prompt, decode) in medians.items():
        ratio = f"{decode / base[1]:.2f}x" if base else "n/a"
        lines.append(f"| {name} | {prompt:.0f} | {decode:.1f} | {ratio} |")
    for name in ("native-amx", "portable"):
        if name not in builds:
            lines.append(f"| {name} | crashed | crashed | - |")
    print("\n".join(lines))
    write_section("llama-build", "\n".join(lines))


if __name__ == "__main__":
    main()
