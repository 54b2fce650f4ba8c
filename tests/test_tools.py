"""The llama.cpp tools built by set-up run, and `slm doctor` reports them."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import run_slm
from slmkit.child_process import free_port
from slmkit.errors import ToolMissingError
from slmkit.export.llama_server import decode_check
from slmkit.models.embedded import embedded_gguf_path
from slmkit.paths import tools_dir
from slmkit.tools import LLAMA_BINARIES, converter_script, llama_tool, run_converter
from slmkit.tools_build import (
    CONFIGS,
    BuildError,
    build_tools,
    compile_config,
    configs_to_try,
    installed_build,
    point_runpath_at_own_folder,
)


@pytest.mark.parametrize("name", ["llama-server", "llama-perplexity"])
def test_llama_tool_reports_its_version(name: str) -> None:
    proc = subprocess.run(
        [str(llama_tool(name)), "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert "version:" in proc.stdout + proc.stderr


def test_llama_quantize_lists_the_levels_we_use() -> None:
    # llama-quantize has no --version; its usage text lists the quantization types.
    proc = subprocess.run(
        [str(llama_tool("llama-quantize")), "--help"], capture_output=True, text=True, timeout=60
    )
    for level in ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"):
        assert level in proc.stdout + proc.stderr


def test_converter_runs_with_bundled_gguf_py() -> None:
    assert converter_script().is_file()
    proc = run_converter(["--help"])
    assert proc.returncode == 0, proc.stderr
    assert "--outtype" in proc.stdout


def test_missing_tool_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("SLM_TOOLS_DIR", str(tmp_path))
    with pytest.raises(ToolMissingError, match="scripts/setup.sh"):
        llama_tool("llama-server")


def test_doctor_reports_every_part(embedded_model_dir) -> None:
    proc = run_slm("doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for part in (
        "torch",
        "transformers",
        *LLAMA_BINARIES,
        "convert_hf_to_gguf.py",
        "embedded model",
        "llama.cpp decodes",
    ):
        assert part in proc.stdout
    assert "all required parts present and working" in proc.stdout


def test_doctor_names_missing_tools_and_fix(tmp_path) -> None:
    proc = run_slm("doctor", env={"SLM_TOOLS_DIR": str(tmp_path)})
    assert proc.returncode == 1
    assert "missing" in proc.stdout and "setup.sh" in proc.stdout


# -- a build that runs where it is built (issue 12) -------------------------------------------

FAKES = Path(__file__).parent / "fakes"
AMX_PATTERN = re.compile(
    r"\s(ldtilecfg|sttilecfg|tileloadd\w*|tilestored|tilerelease|tilezero|tdp\w+)\s"
)


def count_amx_instructions(path: Path) -> int:
    """AMX instructions in a binary's disassembly (objdump -d)."""
    proc = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return sum(1 for line in proc.stdout.splitlines() if AMX_PATTERN.search(line + " "))


def crashing_tools_dir(root: Path) -> Path:
    """A tools folder like set-up's, whose llama-server dies with SIGILL on its first decode."""
    real = tools_dir()
    tools = root / "tools"
    shutil.copytree(real, tools, symlinks=True, ignore=shutil.ignore_patterns("llama-server"))
    shutil.copy2(FAKES / "llama-server", tools / "bin" / "llama-server")
    return tools


def test_built_tools_are_a_known_configuration_without_amx() -> None:
    stamp = installed_build(tools_dir())
    assert stamp is not None, "set-up writes BUILD.json beside the tools"
    assert stamp["config"] in {c.name for c in configs_to_try()}
    if os.environ.get("SLM_LLAMA_AMX") == "1":
        return  # the user asked for AMX (decode-checked); the tests below do not apply
    flags = " ".join(str(a) for a in stamp["cmake_args"])  # type: ignore[union-attr]
    if stamp["config"] == "native":
        for flag in ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"):
            assert flag in flags


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_amx_counter_finds_amx_code(tmp_path: Path) -> None:
    # The counter below must be able to fail: an object file with AMX instructions counts > 0.
    src = tmp_path / "amx.c"
    src.write_text('void f(void) { __asm__ volatile("tilezero %tmm0\\n\\ttilerelease"); }\n')
    obj = tmp_path / "amx.o"
    subprocess.run(["cc", "-c", "-o", str(obj), str(src)], check=True)
    assert count_amx_instructions(obj) == 2


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
@pytest.mark.skipif(
    os.environ.get("SLM_LLAMA_AMX") == "1", reason="AMX asked for (SLM_LLAMA_AMX=1)"
)
def test_built_cpu_library_holds_no_amx_instructions() -> None:
    libs = sorted((tools_dir() / "bin").glob("libggml-cpu*.so*"))
    libs = [lib for lib in libs if not lib.is_symlink()]
    assert libs, "the CPU backend library is installed beside the binaries"
    for lib in libs:
        assert count_amx_instructions(lib) == 0, lib


def test_decode_check_passes_on_the_built_tools() -> None:
    result = decode_check(embedded_gguf_path(), tokens=8)
    assert result.ok, result.detail
    assert result.tokens_per_s and result.tokens_per_s > 0
    assert "decoded 8 tokens" in result.detail


def test_decode_check_catches_a_binary_that_crashes_on_decode() -> None:
    result = decode_check(embedded_gguf_path(), binary=FAKES / "llama-server")
    assert not result.ok
    assert result.returncode == -signal.SIGILL
    assert "crashed with signal 4 (SIGILL" in result.detail
    assert "first decode" in result.detail
    assert "setup.sh" in result.hint


def test_doctor_reports_a_crashing_build_in_one_line(tmp_path: Path) -> None:
    proc = run_slm("doctor", env={"SLM_TOOLS_DIR": str(crashing_tools_dir(tmp_path))})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    failed = [ln for ln in proc.stdout.splitlines() if ln.startswith("failed:")]
    assert len(failed) == 1, proc.stdout
    assert "llama.cpp decodes: crashed with signal 4 (SIGILL" in failed[0]
    assert "(fix: " in failed[0] and "setup.sh" in failed[0]


def test_serve_start_reports_a_crashing_build_in_one_line(tmp_path: Path) -> None:
    env = {"SLM_TOOLS_DIR": str(crashing_tools_dir(tmp_path))}
    proc = run_slm(
        "serve", str(embedded_gguf_path()), "--port", str(free_port()), env=env, timeout=120
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "crashed with signal 4 (SIGILL" in errors[0] and "first decode" in errors[0]
    assert "setup.sh" in errors[0]
    assert "Traceback" not in proc.stderr


FAKE_CMAKE = """#!/usr/bin/env python3
# Stand-in cmake: configure records the flags; build makes a bin/ whose llama-server crashes on
# decode for -DGGML_NATIVE=ON builds and is the real one otherwise; FAIL_CONFIGURE fails a build.
import os, sys
from pathlib import Path
args = sys.argv[1:]
if args[0] == "-S":
    build = Path(args[3]); build.mkdir(parents=True, exist_ok=True)
    (build / "args.txt").write_text(" ".join(args))
    print("-- configuring with", args)
    sys.exit(1 if os.environ.get("FAIL_CONFIGURE") else 0)
build = Path(args[1]); flags = (build / "args.txt").read_text(); bin_dir = build / "bin"
bin_dir.mkdir(exist_ok=True)
for name in ("llama-quantize", "llama-perplexity"):
    (bin_dir / name).write_text("#!/bin/sh\\n"); (bin_dir / name).chmod(0o755)
server = bin_dir / "llama-server"
crash = "-DGGML_NATIVE=ON" in flags or os.environ.get("CRASH_ALL")
server.write_text(open(os.environ["FAKE_SERVER"]).read() if crash else
                  "#!/bin/sh\\nexec " + os.environ["REAL_SERVER"] + ' "$@"\\n')
server.chmod(0o755)
"""


@pytest.fixture
def fake_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    cmake = tmp_path / "cmake"
    cmake.write_text(FAKE_CMAKE)
    cmake.chmod(0o755)
    src = tmp_path / "src"
    (src / "gguf-py").mkdir(parents=True)
    (src / "convert_hf_to_gguf.py").write_text("# converter\n")
    monkeypatch.setenv("FAKE_SERVER", str(FAKES / "llama-server"))
    monkeypatch.setenv("REAL_SERVER", str(tools_dir() / "bin" / "llama-server"))
    return {"cmake": cmake, "src": src, "work": tmp_path / "work", "dest": tmp_path / "dest"}


def test_build_falls_back_to_portable_when_native_crashes(fake_build: dict[str, Path]) -> None:
    said: list[str] = []
    b = fake_build
    result = build_tools(
        b["src"], b["work"], b["dest"], embedded_gguf_path(), cmake=str(b["cmake"]), say=said.append
    )
    assert result.config == "portable"
    assert len(said) == 1
    assert "native build" in said[0] and "crashed with signal 4 (SIGILL" in said[0]
    assert said[0].endswith("rebuilding with the portable configuration")
    stamp = installed_build(b["dest"])
    assert stamp is not None and stamp["config"] == "portable"
    assert (b["dest"] / "VERSION").is_file() and (b["dest"] / "convert_hf_to_gguf.py").is_file()
    # compiler output went to a log per configuration, not to the terminal
    assert "configuring with" in (b["work"] / "build-native.log").read_text()


def test_build_stops_with_one_message_when_nothing_decodes(
    fake_build: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRASH_ALL", "1")
    b = fake_build
    with pytest.raises(BuildError) as caught:
        build_tools(
            b["src"],
            b["work"],
            b["dest"],
            embedded_gguf_path(),
            cmake=str(b["cmake"]),
            say=lambda _: None,
        )
    message = caught.value.message
    assert "no llama.cpp build runs on this machine" in message
    for name in ("native", "portable", "baseline"):
        assert f"{name}: crashed with signal 4" in message
    assert not (b["dest"] / "bin").exists()


def test_failed_build_prints_the_log_tail_and_path(
    fake_build: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAIL_CONFIGURE", "1")
    b = fake_build
    with pytest.raises(BuildError) as caught:
        compile_config(CONFIGS[0], b["src"], b["work"], cmake=str(b["cmake"]))
    assert str(b["work"] / "build-native.log") in caught.value.message
    assert "configuring with" in caught.value.message


def test_amx_opt_in_tries_native_amx_first(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [c.name for c in configs_to_try()] == ["native", "portable", "baseline"]
    monkeypatch.setenv("SLM_LLAMA_AMX", "1")
    assert [c.name for c in configs_to_try()] == ["native-amx", "native", "portable", "baseline"]


def _runpath(binary: Path) -> str:
    dynamic = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True)
    found = re.search(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.*)\]", dynamic.stdout)
    return found.group(1) if found else ""


def test_installed_tools_find_their_libraries_beside_them_when_copied(tmp_path: Path) -> None:
    # cmake bakes the build folder into RUNPATH; set-up rewrites it to $ORIGIN so the tools
    # survive a removed build folder and a copy into a container image
    installed = llama_tool("llama-server").parent
    copy = tmp_path / "bin"
    shutil.copytree(installed, copy, symlinks=True)
    before = _runpath(copy / "llama-server")
    if before != "$ORIGIN":  # tools installed before the rewrite existed: apply it to the copy
        build_bin = Path(before.rstrip(":"))
        assert point_runpath_at_own_folder(copy, build_bin) >= 2  # the binary and its libraries
        assert point_runpath_at_own_folder(copy, build_bin) == 0  # done once, nothing left
    assert _runpath(copy / "llama-server") == "$ORIGIN"
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    linked = subprocess.run(
        ["ldd", str(copy / "llama-server")], capture_output=True, text=True, env=env
    )
    libllama = next(ln for ln in linked.stdout.splitlines() if "libllama" in ln)
    assert f"=> {copy}/" in libllama, libllama
    version = subprocess.run(
        [str(copy / "llama-server"), "--version"], capture_output=True, text=True, env=env
    )
    assert version.returncode == 0 and "version" in (version.stdout + version.stderr)
