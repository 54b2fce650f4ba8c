"""Quantize a reference GGUF with llama.cpp's `llama-quantize`."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from slmkit.export.errors import ExportError
from slmkit.tools import llama_tool

_FALLBACK = re.compile(r"(\d+) of \d+ tensor\(s\) required fallback quantization")


@dataclass
class QuantizedFile:
    level: str  # e.g. "q4_k_m"
    path: Path
    size_bytes: int
    fallback_tensors: (
        int  # tensors whose shape forced another type (rows not divisible by the block size)
    )


def quantize(
    reference: Path, level: str, out_file: Path, *, threads: int = 2, imatrix: Path | None = None
) -> QuantizedFile:
    """`llama-quantize REFERENCE OUT LEVEL`; raises with llama-quantize's last lines on failure."""
    cmd = [str(llama_tool("llama-quantize"))]
    if imatrix is not None:
        cmd += ["--imatrix", str(imatrix)]
    cmd += [str(reference), str(out_file), level.upper(), str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or not out_file.is_file():
        tail = [ln for ln in output.strip().splitlines() if ln.strip()][-3:]
        raise ExportError(f"llama-quantize {level} failed: {' | '.join(tail) or 'no output'}")
    fallback = _FALLBACK.search(output)
    return QuantizedFile(
        level, out_file, out_file.stat().st_size, int(fallback.group(1)) if fallback else 0
    )
