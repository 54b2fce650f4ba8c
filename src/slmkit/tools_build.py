"""Build llama.cpp's tools from the pinned source so that they run on *this* machine.

A cpuinfo flag is a promise, not a proof: a VM on a recent Xeon advertises AMX and then refuses
its tile state, and a `-DGGML_NATIVE=ON` build dies with SIGILL on its first decode while
`--version` still works. So every build is decode-checked on the embedded GGUF before it is
installed, and the configurations are tried in order until one decodes:

1. `native`: tuned to this CPU (`-march=native`) with AMX compiled out. Decode speed is the
   native build's; on a Xeon that does allow AMX, prompt processing is about half as fast
   (docs/benchmarks.md), so `SLM_LLAMA_AMX=1` tries `native-amx` (AMX kept) first, decode-checked
   like the others.
2. `portable`: x86-64 with AVX2/FMA/F16C, nothing newer.
3. `baseline`: SSE4.2 only.

`SLM_LLAMA_PORTABLE=1` (the Dockerfile sets it) skips the native builds: an image's tools must
run on the nodes that pull it, not only on the CPU that built it.

Run by set-up as `python -m slmkit.tools_build --src SRC --work WORK --dest DEST`. Compiler output
goes to a log per configuration; on failure the log's last lines and its path are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from slmkit.errors import ToolMissingError
from slmkit.export.llama_server import decode_check
from slmkit.tools import LLAMA_BINARIES

NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
COMMON_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
)
BUILD_STAMP = "BUILD.json"
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class BuildConfig:
    name: str
    what: str
    cmake_args: tuple[str, ...]


NATIVE = BuildConfig(
    "native",
    "-march=native without AMX",
    ("-DGGML_NATIVE=ON", f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"),
)
PORTABLE = BuildConfig("portable", "AVX2/FMA/F16C, no AVX-512, no AMX", ("-DGGML_NATIVE=OFF",))
BASELINE = BuildConfig(
    "baseline",
    "SSE4.2 only",
    ("-DGGML_NATIVE=OFF", *(f"-DGGML_{f}=OFF" for f in ("AVX", "AVX2", "BMI2", "FMA", "F16C"))),
)
# Opt-in (SLM_LLAMA_AMX=1) and benchmarks: -march=native as is, the build set-up made before.
NATIVE_WITH_AMX = BuildConfig(
    "native-amx", "-march=native as is (AMX where advertised)", ("-DGGML_NATIVE=ON",)
)
CONFIGS = (NATIVE, PORTABLE, BASELINE)
AMX_OPT_IN = "SLM_LLAMA_AMX"
# Container images (Dockerfile): the tools must run on whatever node pulls the image, not only on
# the CPU that built it, so the native builds are skipped.
PORTABLE_ONLY = "SLM_LLAMA_PORTABLE"


def configs_to_try() -> tuple[BuildConfig, ...]:
    """The configurations set-up tries, in order (AMX first only when the user opted in; no
    native build with SLM_LLAMA_PORTABLE=1)."""
    if os.environ.get(PORTABLE_ONLY) == "1":
        return (PORTABLE, BASELINE)
    return (NATIVE_WITH_AMX, *CONFIGS) if os.environ.get(AMX_OPT_IN) == "1" else CONFIGS


CONFIG_BY_NAME = {c.name: c for c in (*CONFIGS, NATIVE_WITH_AMX)}


class BuildError(ToolMissingError):
    """No configuration could be built, or none that was built decodes on this machine."""


@dataclass
class BuildResult:
    config: str
    cmake_args: list[str]
    decode: str
    tokens_per_s: float | None
    seconds: float
    tried: list[str]


Say = Callable[[str], None]


def _say(message: str) -> None:
    print(f"[setup] {message}", flush=True)


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def compile_config(
    config: BuildConfig, src: Path, work: Path, *, cmake: str = "cmake", jobs: int | None = None
) -> Path:
    """Configure and build the tools with `config` in `work/build-NAME`; returns its bin folder.
    All compiler output goes to `work/build-NAME.log`."""
    build_dir = work / f"build-{config.name}"
    log_path = work / f"build-{config.name}.log"
    work.mkdir(parents=True, exist_ok=True)
    steps = [
        [cmake, "-S", str(src), "-B", str(build_dir), *COMMON_ARGS, *config.cmake_args],
        [
            cmake,
            "--build",
            str(build_dir),
            f"-j{jobs or os.cpu_count() or 2}",
            "--target",
            *LLAMA_BINARIES,
        ],
    ]
    with log_path.open("w") as log:
        for cmd in steps:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
            if rc != 0:
                raise BuildError(
                    f"llama.cpp {config.name} build failed (exit {rc}); last lines of {log_path}:\n"
                    f"{log_tail(log_path)}"
                )
    return build_dir / "bin"


def install(bin_dir: Path, src: Path, dest: Path, result: BuildResult) -> None:
    """Copy the binaries (with their shared libraries), the converter and its gguf-py into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("bin", "gguf-py", "conversion"):
        shutil.rmtree(dest / name, ignore_errors=True)
    shutil.copytree(bin_dir, dest / "bin", symlinks=True)
    point_runpath_at_own_folder(dest / "bin", bin_dir)
    shutil.copy2(src / "convert_hf_to_gguf.py", dest / "convert_hf_to_gguf.py")
    shutil.copytree(src / "gguf-py", dest / "gguf-py")
    if (src / "conversion").is_dir():  # newer converters import their model classes from it
        shutil.copytree(src / "conversion", dest / "conversion")
    else:
        (dest / "conversion").mkdir()
    version = subprocess.run(
        [str(dest / "bin" / "llama-server"), "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in (version.stdout + version.stderr).splitlines() if ln.strip()]
    (dest / "VERSION").write_text("\n".join(lines[:2]) + "\n")
    (dest / BUILD_STAMP).write_text(json.dumps(asdict(result), indent=2) + "\n")


def point_runpath_at_own_folder(folder: Path, build_bin: Path) -> int:
    """Make installed binaries find their shared libraries beside them, not in the build folder.

    cmake bakes the build folder into each ELF file's RUNPATH, so the installed tools broke once
    that folder was removed or the tools were copied elsewhere (a container image). As `chrpath`
    does, the RUNPATH string is overwritten in place with the shorter `$ORIGIN` (padded with
    NULs), so nothing in the file moves. Returns how many files were changed."""
    old = str(build_bin).encode()
    changed = 0
    for path in sorted(folder.iterdir()):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if not data.startswith(b"\x7fELF"):
            continue
        patched = data
        for entry in (old + b":", old):  # cmake may end the list with a ':'
            whole = b"\0" + entry + b"\0"  # the whole string in .dynstr, not a longer one
            replacement = b"\0" + b"$ORIGIN".ljust(len(entry), b"\0") + b"\0"
            patched = patched.replace(whole, replacement)
        if patched != data:
            path.write_bytes(patched)
            changed += 1
    return changed


def build_tools(
    src: Path,
    work: Path,
    dest: Path,
    gguf: Path,
    *,
    configs: Sequence[BuildConfig] | None = None,
    cmake: str = "cmake",
    jobs: int | None = None,
    say: Say = _say,
) -> BuildResult:
    """Build each configuration in turn until one decodes `gguf`; install that one into `dest`."""
    configs = configs or configs_to_try()
    tried: list[str] = []
    failure = ""
    for i, config in enumerate(configs):
        started = time.monotonic()
        following = configs[i + 1].name if i + 1 < len(configs) else None
        try:
            bin_dir = compile_config(config, src, work, cmake=cmake, jobs=jobs)
        except BuildError as exc:
            tried.append(f"{config.name}: build failed")
            failure = exc.message
            if following:
                say(f"llama.cpp {config.name} build failed; trying the {following} configuration")
            continue
        check = decode_check(gguf, binary=bin_dir / "llama-server")
        if check.ok:
            result = BuildResult(
                config.name,
                [*COMMON_ARGS, *config.cmake_args],
                check.detail,
                check.tokens_per_s,
                round(time.monotonic() - started, 1),
                [*tried, f"{config.name}: {check.detail}"],
            )
            install(bin_dir, src, dest, result)
            return result
        tried.append(f"{config.name}: {check.detail}")
        failure = f"the {config.name} build {check.detail}"
        if following:
            say(
                f"llama.cpp {config.name} build ({config.what}) {check.detail}; "
                f"rebuilding with the {following} configuration"
            )
    raise BuildError(f"no llama.cpp build runs on this machine ({'; '.join(tried)}): {failure}")


VOCABS = ("llama-bpe", "qwen2", "llama-spm", "phi-3", "gemma-4")


def install_model_assets(src: Path, dest: Path) -> None:
    """The source's vocab-only GGUFs of the families we test (with llama.cpp's reference
    tokenizations, `.inp`/`.out`) and its chat templates, into `dest/models` (kept when present)."""
    target = dest / "models"
    if (target / "templates").is_dir() and all(
        (target / f"ggml-vocab-{name}.gguf").is_file() for name in VOCABS
    ):
        return
    models = src / "models"
    if not models.is_dir():
        return  # an older source release without them
    target.mkdir(parents=True, exist_ok=True)
    for name in VOCABS:
        for path in models.glob(f"ggml-vocab-{name}.gguf*"):
            shutil.copy2(path, target / path.name)
    shutil.rmtree(target / "templates", ignore_errors=True)
    shutil.copytree(models / "templates", target / "templates")


def installed_build(dest: Path) -> dict[str, object] | None:
    """The stamp of the tools in `dest` when set-up built them with a known configuration."""
    stamp = dest / BUILD_STAMP
    if not all((dest / "bin" / name).is_file() for name in LLAMA_BINARIES) or not stamp.is_file():
        return None
    try:
        data = json.loads(stamp.read_text())
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("config") in CONFIG_BY_NAME else None


def ensure_tools(src: Path, work: Path, dest: Path, gguf: Path, say: Say = _say) -> None:
    """Set-up's step: keep installed tools that decode here, else build (with fallbacks).
    Tools without a stamp predate the AMX-free build and are rebuilt, and so are tools of a
    configuration no longer asked for (SLM_LLAMA_AMX turned on or off)."""
    stamp = installed_build(dest)
    if stamp is not None and stamp["config"] in {c.name for c in configs_to_try()}:
        check = decode_check(gguf, binary=dest / "bin" / "llama-server")
        if check.ok:
            say(f"llama.cpp tools: cached ({dest}, {stamp['config']} build, {check.detail})")
            return
        say(f"llama.cpp tools in {dest} {check.detail}; rebuilding")
    result = build_tools(src, work, dest, gguf, say=say)
    say(f"llama.cpp tools: {result.config} build ({result.decode}) in {dest}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--src", type=Path, required=True, help="vendor/llama.cpp of the source release"
    )
    parser.add_argument("--work", type=Path, required=True, help="build folders and logs")
    parser.add_argument("--dest", type=Path, required=True, help="where the tools are installed")
    parser.add_argument("--gguf", type=Path, help="GGUF for the decode check (default: embedded)")
    args = parser.parse_args(argv)
    if args.gguf is None:
        from slmkit.models.embedded import embedded_gguf_path

        args.gguf = embedded_gguf_path()
    try:
        ensure_tools(args.src, args.work, args.dest, args.gguf)
        install_model_assets(args.src, args.dest)
    except BuildError as exc:
        print(f"[setup] error: {exc.message}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
