"""KL divergence, top-1 agreement and perplexity ratio of a quantized GGUF against the f16 GGUF.

Uses llama.cpp's `llama-perplexity`: the f16 model runs once with `--kl-divergence-base FILE`
(saving its logits on the held-out text), then each quantized model with
`--kl-divergence-base FILE --kl-divergence` (comparing its logits with the saved ones).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from slmkit.export.errors import ExportError
from slmkit.tools import llama_tool

PACKAGED_HELDOUT = Path(__file__).with_name("heldout.txt")
_NUMBER = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_PATTERNS = {
    "mean_kld": re.compile(rf"Mean\s+KLD:\s+{_NUMBER}"),
    "same_top1": re.compile(rf"Same top p:\s+{_NUMBER}"),
    "ppl_ratio": re.compile(rf"Mean PPL\(Q\)/PPL\(base\)\s*:\s+{_NUMBER}"),
    "ppl": re.compile(rf"Mean PPL\(Q\)\s*:\s+{_NUMBER}"),
    "ppl_base": re.compile(rf"Mean PPL\(base\)\s*:\s+{_NUMBER}"),
}
_FINAL_PPL = re.compile(rf"Final estimate: PPL = {_NUMBER}")


@dataclass
class KldStats:
    """One quantized level against the f16 reference on held-out text."""

    mean_kld: float
    same_top1: float  # share (0..1) of tokens whose most likely next token equals the reference's
    ppl_ratio: float
    ppl: float


def default_heldout(start: Path | None = None) -> Path:
    """examples/data/heldout.txt from the current folder or the source checkout, else the packaged text."""
    here = (start or Path.cwd()).resolve()
    for root in (here, *here.parents, Path(__file__).resolve().parents[3]):
        candidate = root / "examples" / "data" / "heldout.txt"
        if candidate.is_file():
            return candidate
    return PACKAGED_HELDOUT


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        need = re.search(r"you need at least (\d+) tokens", output)
        if need:
            raise ExportError(
                f"held-out text is too short for llama-perplexity (needs {need.group(1)} tokens)",
                hint="give a longer --heldout file or a smaller --ppl-ctx",
            )
        tail = [ln for ln in output.strip().splitlines() if ln.strip()][-3:]
        raise ExportError(f"llama-perplexity failed: {' | '.join(tail) or 'no output'}")
    return output


def save_reference_logits(
    f16: Path, text: Path, base_file: Path, *, ctx: int, chunks: int, threads: int
) -> float:
    """Run the f16 GGUF over `text`, saving its logits to `base_file`; returns its perplexity."""
    output = _run(
        [
            str(llama_tool("llama-perplexity")),
            "-m",
            str(f16),
            "-f",
            str(text),
            "-c",
            str(ctx),
            "--chunks",
            str(chunks),
            "-t",
            str(threads),
            "--kl-divergence-base",
            str(base_file),
        ]
    )
    match = _FINAL_PPL.search(output)
    return float(match.group(1)) if match else float("nan")


def compare_to_reference(quant: Path, base_file: Path, *, threads: int) -> KldStats:
    """Mean KLD, same-top-1 share, PPL ratio of `quant` against the saved f16 logits."""
    output = _run(
        [
            str(llama_tool("llama-perplexity")),
            "-m",
            str(quant),
            "-t",
            str(threads),
            "--kl-divergence-base",
            str(base_file),
            "--kl-divergence",
        ]
    )
    values: dict[str, float] = {}
    for name, pattern in _PATTERNS.items():
        match = pattern.search(output)
        if match is None and name != "ppl_base":
            raise ExportError(
                f"could not read {name} from llama-perplexity's output for {quant.name}"
            )
        if match is not None:
            values[name] = float(match.group(1))
    return KldStats(
        values["mean_kld"], values["same_top1"] / 100.0, values["ppl_ratio"], values["ppl"]
    )


def perplexity_context(n_tokens: int, wanted_ctx: int) -> int:
    """The largest context <= `wanted_ctx` (multiple of 16) that leaves llama-perplexity two chunks."""
    ctx = min(wanted_ctx, n_tokens // 2 - 8)
    ctx -= ctx % 16
    if ctx < 32:
        raise ExportError(
            f"held-out text has only {n_tokens} tokens; llama-perplexity needs at least 80",
            hint="give a longer --heldout file",
        )
    return ctx
