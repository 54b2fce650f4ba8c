"""`slm doctor`: what is installed, where, and how to fix what is missing."""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from slmkit.console import out
from slmkit.errors import SlmError
from slmkit.paths import models_cache_dir, slm_home, tools_dir
from slmkit.tools import LLAMA_BINARIES, SETUP_HINT, converter_script, llama_tool, tool_version


@dataclass
class Check:
    name: str
    status: str  # "ok" | "missing" | "info"
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
    return checks


def _torch_check() -> Check:
    try:
        import torch
    except ImportError:
        return Check("torch", "missing", "not installed", "pip install torch==2.13.0")
    cuda = torch.cuda.is_available()
    device = f"CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}" if cuda else "CPU only"
    bf16 = (
        "bf16 ok"
        if (cuda and torch.cuda.is_bf16_supported()) or (not cuda and _cpu_has_bf16())
        else "no bf16"
    )
    return Check("torch", "ok", f"{torch.__version__} ({device}, {bf16})")


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
    style = {"ok": "[green]ok[/green]", "missing": "[red]missing[/red]", "info": "[dim]info[/dim]"}
    for c in checks:
        table.add_row(c.name, style[c.status], c.detail, c.fix)
    out.print(table)
    missing = [c.name for c in checks if c.status == "missing" and c.required]
    out.print(
        "[red]missing: " + ", ".join(missing) + "[/red]"
        if missing
        else "[green]all required parts present[/green]"
    )
