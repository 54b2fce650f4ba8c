"""Which dtype to load weights in: `auto` keeps a bf16/fp16 checkpoint in bf16 where bf16 runs
(a 7B model needs ~14 GiB instead of ~28 GiB in fp32), and loads everything else in fp32.

Whether bf16 runs on this CPU is decided by running a bf16 matmul in a child process once (a CPU
flag is a promise, not a proof: a VM may advertise AVX512-BF16 or AMX and refuse it); the answer is
kept in `SLM_HOME` per CPU model and torch version.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

LoadDtype = str  # "auto" | "float32" | "bfloat16" | "float16"
HALF = ("bfloat16", "float16")
BF16_PROBE = """
import torch
dev = "cuda" if torch.cuda.is_available() else "cpu"
a = torch.randn(64, 64, device=dev)
exact = a @ a
got = (a.bfloat16() @ a.bfloat16()).float()
assert torch.allclose(got, exact, rtol=0.05, atol=0.5), "wrong result"
print("ok")
"""


def checkpoint_dtype(folder: Path | str) -> str | None:
    """The dtype a checkpoint was saved in (`torch_dtype` / `dtype` of its config.json)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("dtype") or config.get("torch_dtype")
    return str(value) if value else None


def resolve_dtype(requested: LoadDtype, folder: Path | str | None, device: str = "cpu") -> str:
    """The dtype to load with: an explicit one as it is; `auto` -> bf16 for a bf16/fp16
    checkpoint where bf16 runs (fp16 on a GPU without bf16), else fp32."""
    if requested != "auto":
        return requested
    saved = checkpoint_dtype(folder) if folder is not None else None
    if saved not in HALF:
        return "float32"
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if bf16_runs_on_cpu() else "float32"


def bf16_runs_on_cpu() -> bool:
    """Whether a bf16 matmul gives the right result here (probed once, then remembered)."""
    import torch

    from slmkit.paths import slm_home

    key = f"{platform.processor() or platform.machine()}|{_cpu_model()}|{torch.__version__}"
    cache = slm_home() / "cpu-bf16.json"
    known: dict[str, Any] = {}
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return bool(known[key])
    ok = probe_bf16()
    known[key] = ok
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known))
    except OSError:
        pass
    return ok


def probe_bf16() -> bool:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", BF16_PROBE], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""
