"""Which dtype to load weights in: `auto` keeps a bf16/fp16 checkpoint in bf16 where bf16 runs
well enough (a 7B model needs ~14 GiB instead of ~28 GiB in fp32), and loads everything else in fp32.

Whether bf16 runs on this CPU is decided by running bf16 and fp32 matmuls in a child process once
(a CPU flag is a promise, not a proof: a VM may advertise AVX512-BF16 or AMX and refuse it); the
answer is kept in `SLM_HOME` per CPU model and torch version. A CPU without native bf16 computes it
slowly: there bf16 is chosen only when the fp32 weights would not fit in memory.
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
# the same check, then how long bf16 takes against fp32 on a layer-sized product
BF16_TIMED_PROBE = (
    BF16_PROBE
    + """
import json, time
x, w = torch.randn(64, 512), torch.randn(512, 512)
def timed(a, b):  # the fastest of 7 tries: a busy machine only ever adds time
    a @ b
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best
print(json.dumps({"ratio": timed(x.bfloat16(), w.bfloat16()) / timed(x, w)}))
"""
)
FAST_ENOUGH = 1.5  # bf16 at most this many times slower than fp32 counts as running well
BF16_FASTER = 0.8  # bf16 taking at most this share of fp32's time is worth generating in


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
    ratio = bf16_speed_on_cpu()
    if ratio is None:
        return "float32"
    if ratio <= FAST_ENOUGH or not _fits_in_fp32(folder):
        return "bfloat16"
    return "float32"


def generation_dtype(requested: LoadDtype, loaded: str, device: str = "cpu") -> str:
    """The dtype to generate in, given the one the weights loaded in: `auto` turns fp32 weights
    into bf16 on a CPU where a bf16 matmul measurably beats fp32's (on a 2-core AVX512-BF16 EPYC,
    decoding the embedded model ran twice as fast), as training's `precision: auto` does; a CPU
    without native bf16, or an explicit dtype, keeps what loaded."""
    if requested != "auto" or loaded != "float32" or not device.startswith("cpu"):
        return loaded
    ratio = bf16_speed_on_cpu()
    return "bfloat16" if ratio is not None and ratio <= BF16_FASTER else loaded


def _fits_in_fp32(folder: Path | str | None) -> bool:
    """Whether the fp32 weights of a half-precision checkpoint take under 60% of free memory."""
    import psutil

    if folder is None:
        return True
    on_disk = sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
    return 2 * on_disk < 0.6 * psutil.virtual_memory().available


def bf16_speed_on_cpu() -> float | None:
    """bf16 / fp32 time of a matmul here, None when bf16 gives wrong results or crashes
    (probed once per CPU model and torch version, then remembered)."""
    import torch

    from slmkit.paths import slm_home

    key = f"{platform.processor() or platform.machine()}|{_cpu_model()}|{torch.__version__}"
    cache = slm_home() / "cpu-bf16.json"
    known: dict[str, Any] = {}
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = probe_bf16()
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(known))
        except OSError:
            pass
    ratio = known[key]
    return float(ratio) if isinstance(ratio, (int, float)) and ratio > 0 else None


def probe_bf16() -> float | None:
    """Run the timed probe in a child process: a crash (SIGILL) must not take the caller down."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", BF16_TIMED_PROBE], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or len(lines) < 2 or lines[0] != "ok":
        return None
    try:
        return float(json.loads(lines[-1])["ratio"])
    except (ValueError, KeyError, TypeError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""
