"""`slm doctor`: what is installed, where, and how to fix what is missing."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from dataclasses import dataclass

from rich.markup import escape
from rich.table import Table

from slmkit.console import out
from slmkit.errors import SlmError
from slmkit.models.precision import BF16_PROBE
from slmkit.paths import models_cache_dir, slm_home, tools_dir
from slmkit.tools import LLAMA_BINARIES, SETUP_HINT, converter_script, llama_tool, tool_version


@dataclass
class Check:
    name: str
    status: str  # "ok" | "missing" | "failed" | "info"
    detail: str
    fix: str = ""
    required: bool = True


def run_checks() -> list[Check]:
    checks = [
        Check(
            "python", "info", f"{platform.python_version()} ({platform.machine()})", required=False
        ),
        Check("SLM_HOME", "info", str(slm_home()), required=False),
    ]
    checks += [_torch_check(), *_package_checks(), *_llama_checks(), _model_check()]
    if all(c.status == "ok" for c in checks if c.name == "llama-server"):
        checks.append(_decode_check())
    return checks


def _torch_check() -> Check:
    try:
        import torch
    except ImportError:
        return Check("torch", "missing", "not installed", "pip install torch==2.13.0")
    cuda = torch.cuda.is_available()
    device = f"CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}" if cuda else "CPU only"
    bf16 = _bf16_runs(cuda)
    return Check("torch", "ok", f"{torch.__version__} ({device}, {bf16})")


def _bf16_runs(cuda: bool) -> str:
    """Run a bf16 matmul in a child process: a CPU flag is not proof that the kernels run here
    (a VM may advertise AMX/AVX512-BF16 and refuse it), and a crash must not take doctor down."""
    from slmkit.child_process import describe_exit

    try:
        proc = subprocess.run(
            [sys.executable, "-c", BF16_PROBE], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return "bf16 probe timed out"
    if proc.returncode == 0 and proc.stdout.strip() == "ok":
        return "bf16 runs" + ("" if cuda else " (speed: see docs/benchmarks.md)")
    if proc.returncode < 0:
        return f"bf16 matmul {describe_exit(proc.returncode)}"
    lines = proc.stderr.strip().splitlines()
    return f"no bf16 ({lines[-1] if lines else 'probe failed'})"


def _package_checks() -> list[Check]:
    checks = []
    for name in ("transformers", "peft", "trl", "accelerate", "fastapi"):
        try:
            checks.append(Check(name, "ok", importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            checks.append(Check(name, "missing", "not installed", SETUP_HINT))
    for name, why in (("bitsandbytes", "QLoRA on CUDA"), ("vllm", "vLLM engine on CUDA")):
        try:
            checks.append(Check(name, "ok", importlib.metadata.version(name), required=False))
        except importlib.metadata.PackageNotFoundError:
            checks.append(Check(name, "info", f"not installed (optional: {why})", required=False))
    return checks


def _llama_checks() -> list[Check]:
    checks = []
    for name in LLAMA_BINARIES:
        try:
            path = llama_tool(name)
            checks.append(Check(name, "ok", f"{tool_version(name)} at {path}"))
        except (SlmError, OSError, IndexError) as exc:
            checks.append(Check(name, "missing", str(exc).split(" (")[0], SETUP_HINT))
    try:
        checks.append(Check("convert_hf_to_gguf.py", "ok", str(converter_script())))
    except SlmError:
        checks.append(
            Check("convert_hf_to_gguf.py", "missing", f"not in {tools_dir()}", SETUP_HINT)
        )
    return checks


def _decode_check() -> Check:
    """Load the embedded GGUF in llama-server and decode: `--version` proves nothing about the kernels."""
    from slmkit.export.llama_server import decode_check
    from slmkit.models import embedded

    try:
        gguf = embedded.embedded_gguf_path()
    except SlmError as exc:
        return Check("llama.cpp decodes", "missing", f"no GGUF to try ({exc.message})", SETUP_HINT)
    result = decode_check(gguf)
    detail = f"{result.detail} ({build_config()})"
    return Check("llama.cpp decodes", "ok" if result.ok else "failed", detail, result.hint)


def build_config() -> str:
    """Which set-up configuration built the installed tools (from their BUILD.json)."""
    from slmkit.tools_build import installed_build

    stamp = installed_build(tools_dir())
    return f"{stamp['config']} build" if stamp else "build of unknown configuration"


def _model_check() -> Check:
    from slmkit.models import embedded

    try:
        gguf = embedded.embedded_gguf_path()
    except SlmError as exc:
        return Check("embedded model", "missing", exc.message, exc.hint or SETUP_HINT)
    if embedded.is_cached():
        return Check(
            "embedded model", "ok", f"cached at {embedded.embedded_cache_path()} (from {gguf.name})"
        )
    return Check(
        "embedded model",
        "missing",
        f"not converted yet (cache: {models_cache_dir()})",
        "run `slm models warm default` (about 40 s, once)",
    )


def print_report(checks: list[Check]) -> None:
    table = Table("check", "status", "detail", "fix")
    style = {
        "ok": "[green]ok[/green]",
        "missing": "[red]missing[/red]",
        "failed": "[red]failed[/red]",
        "info": "[dim]info[/dim]",
    }
    for c in checks:
        table.add_row(c.name, style[c.status], c.detail, c.fix)
    out.print(table)
    missing = [c.name for c in checks if c.status == "missing" and c.required]
    failed = [
        f"{c.name}: {c.detail}" + (f" (fix: {c.fix})" if c.fix else "")
        for c in checks
        if c.status == "failed" and c.required
    ]
    if missing:
        out.print("[red]missing: " + ", ".join(missing) + "[/red]")
    for line in failed:
        out.print(f"[red]failed: {escape(line)}[/red]", soft_wrap=True)  # one line, copy-pasteable
    if not missing and not failed:
        out.print("[green]all required parts present and working[/green]")
