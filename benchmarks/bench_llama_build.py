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
        timings = server.post("/completion", body)["timings"]
    return float(timings["prompt_per_second"]), float(timings["predicted_per_second"])


def amx_count(bin_dir: Path) -> str:
    """AMX instructions in the build's CPU library (objdump -d), or '?' without objdump."""
    import re
    import shutil
    import subprocess

    libs = [p for p in bin_dir.glob("libggml-cpu*.so*") if not p.is_symlink()]
    if not libs or shutil.which("objdump") is None:
        return "?"
    pattern = re.compile(
        r"\s(ldtilecfg|sttilecfg|tileloadd\w*|tilestored|tilerelease|tilezero|tdp\w+)\s"
    )
    asm = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(libs[0])], capture_output=True, text=True
    )
    return str(sum(1 for line in asm.stdout.splitlines() if pattern.search(line + " ")))


def cpu_flags() -> str:
    try:
        flags = next(
            ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")
        )
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
    return " ".join(f for f in wanted if f in flags.split()) or "none of avx2/avx512/amx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="Alternating rounds per build.")
    parser.add_argument("--tokens", type=int, default=128, help="Tokens decoded per round.")
    parser.add_argument("--src", type=Path, help="llama.cpp source (default: set-up's)")
    parser.add_argument("--work", type=Path, help="build folders (default: set-up's)")
    parser.add_argument("--gguf", type=Path, help="model (default: the embedded GGUF)")
    parser.add_argument(
        "--install", action="store_true", help="Build the installed tools too (a bare machine)."
    )
    parser.add_argument(
        "--section", type=Path, help="Write the markdown here instead of docs/benchmarks.md."
    )
    args = parser.parse_args()
    from slmkit.export.llama_server import decode_check
    from slmkit.paths import LLAMA_CPP_PYTHON_VERSION, slm_home, tools_dir
    from slmkit.tools_build import CONFIG_BY_NAME, build_tools, compile_config, installed_build

    if args.gguf is None:
        from slmkit.models.embedded import embedded_gguf_path

        args.gguf = embedded_gguf_path()
    gguf = args.gguf
    work = args.work or slm_home() / "build" / f"lcp-{LLAMA_CPP_PYTHON_VERSION}"
    src = args.src or work / "src" / "vendor" / "llama.cpp"
    tools = tools_dir() if not args.install else work / "installed"
    if args.install:
        build_tools(src, work, tools, gguf)
    stamp = installed_build(tools)
    installed = str(stamp["config"]) if stamp else "unknown"
    builds = {f"installed ({installed})": tools / "bin"}
    notes = [f"installed ({installed}): {amx_count(tools / 'bin')} AMX instructions"]
    for name in ("native-amx", "portable"):
        print(
            f"building {name} (cached after the first run; log in {work}/build-{name}.log)",
            flush=True,
        )
        bin_dir = compile_config(CONFIG_BY_NAME[name], src, work)
        check = decode_check(gguf, binary=bin_dir / "llama-server")
        print(f"  {name}: {check.detail}", flush=True)
        notes.append(f"{name}: {amx_count(bin_dir)} AMX instructions, {check.detail}")
        if check.ok:
            builds[name] = bin_dir
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in builds}
    order = list(builds.items())
    for i in range(args.rounds):  # each build goes first in turn: no build owns a warm start
        for name, bin_dir in order[i % len(order) :] + order[: i % len(order)]:
            results[name].append(measure(bin_dir / "llama-server", gguf, args.tokens))
        print(f"round {i + 1}/{args.rounds} done", flush=True)
    medians = {
        name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
        for name, rs in results.items()
    }
    base = medians.get("native-amx")
    lines = [
        f"Measured on {machine_line()}; CPU flags: {cpu_flags()}. Model: {gguf.name}, "
        f"{len(PROMPT.split())}-word prompt, {args.tokens} decoded tokens, greedy; median of "
        f"{args.rounds} rounds, each build first in turn, every core. Baseline: the plain `-DGGML_NATIVE=ON` "
        "build set-up made before AMX was compiled out (`native-amx`).",
        "",
        "| build | prompt tok/s | decode tok/s | prompt vs baseline | decode vs baseline |",
        "|---|---|---|---|---|",
    ]
    for name, (prompt, decode) in medians.items():
        ratios = f"{prompt / base[0]:.2f}x | {decode / base[1]:.2f}x" if base else "n/a | n/a"
        lines.append(f"| {name} | {prompt:.0f} | {decode:.1f} | {ratios} |")
    for name in ("native-amx", "portable"):
        if name not in builds:
            lines.append(f"| {name} | crashed | crashed | - | - |")
    lines += ["", *(f"- {note}" for note in notes)]
    text = "\n".join(lines)
    print(text)
    if args.section is not None:
        args.section.write_text(text + "\n")
    else:
        write_section(
            "llama-build",
            "## llama.cpp build (`benchmarks/bench_llama_build.py`)\n\n" + text,
        )


if __name__ == "__main__":
    main()
