"""`slm export --format gptq|awq`: the merged model as a 4-bit compressed-tensors folder for vLLM.

llm-compressor (vLLM's own quantizer) does the work in its own virtual environment, because its
release pins an older transformers than slmkit's (0.14 allows at most 5.17); set-up builds that
environment beside the llama.cpp tools. The job runs `compressor_tool.py` there: calibrate on the
run's own prompts and part of the held-out text, quantize the Linear layers to INT4 (weights only,
group-wise; the largest of 128/64/32 that divides every layer), save, reload the saved folder and
measure it against the unquantized model on the rest of the held-out text (KL divergence, top-1,
perplexity), as the GGUF levels are measured against f16.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmkit.export.errors import ExportError
from slmkit.paths import slm_home

if TYPE_CHECKING:
    from slmkit.export.config import ExportConfig
    from slmkit.export.pipeline import ExportResult

LLMCOMPRESSOR_VERSION = "0.14.0.1"
COMPRESSED_FORMATS = ("gptq", "awq")
CALIBRATION_TEXTS = 64
HELDOUT_TEXTS = 16
MAX_LENGTH = 256


def tool_env() -> Path:
    """The llm-compressor virtual environment (`$SLM_COMPRESSOR_ENV`, default under `$SLM_HOME`)."""
    env = os.environ.get("SLM_COMPRESSOR_ENV")
    if env:
        return Path(env).expanduser()
    return slm_home() / "llmcompressor" / f"lc-{LLMCOMPRESSOR_VERSION}"


def tool_python() -> Path:
    python = tool_env() / "bin" / "python"
    if not python.is_file():
        raise ExportError(
            f"--format gptq/awq needs the llm-compressor environment, not found at {tool_env()}",
            hint="run scripts/setup.sh (it builds it; SLM_COMPRESSOR=0 skips it) or set SLM_COMPRESSOR_ENV",
        )
    return python


def default_compressed_dir(resolved: Any, method: str) -> Path:
    if resolved.run_dir is not None:
        return resolved.run_dir / f"export-{method}"
    return Path("exports") / f"{resolved.name}-{method}"


def calibration_and_heldout(
    hf_dir: Path, prompts: list[Any], heldout: Path
) -> tuple[list[str], list[str]]:
    """Calibration texts: the eval prompts rendered as the model sees them, then held-out paragraphs;
    the measured texts: the other held-out paragraphs (never calibrated on)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    rendered = []
    if tokenizer.chat_template:
        rendered = [
            str(tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True))
            for m in prompts
        ]
    paragraphs = [p.strip() for p in heldout.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    measured = paragraphs[1::2][:HELDOUT_TEXTS]
    calibration = (rendered + paragraphs[0::2])[:CALIBRATION_TEXTS]
    if not measured or not calibration:
        raise ExportError(
            f"{heldout}: needs at least two paragraphs (blank-line separated) to calibrate and measure",
            hint="give a longer --heldout file",
        )
    return calibration, measured


def stored_dtype(hf_dir: Path) -> str:
    """The 16-bit dtype the folder is stored in: the checkpoint's, bfloat16 for a float32 one."""
    config = json.loads((hf_dir / "config.json").read_text())
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "")
    return dtype if dtype in ("float16", "bfloat16") else "bfloat16"


def run_compressor(job: dict[str, Any]) -> dict[str, Any]:
    """Run the tool on one job; returns its quality.json."""
    python = tool_python()
    script = Path(__file__).with_name("compressor_tool.py")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    try:
        done = subprocess.run(
            [str(python), str(script), f.name], capture_output=True, text=True, check=False
        )
    finally:
        Path(f.name).unlink(missing_ok=True)
    quality = Path(job["out"]) / "quality.json"
    if done.returncode != 0 or not quality.is_file():
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if "rror" in ln), lines[-1] if lines else "")
        raise ExportError(
            f"llm-compressor {job['method']} failed on {job['model']}: {last or done.returncode}",
            hint="`slm export --debug` shows the whole output; llm-compressor knows the Llama, "
            "Mistral, Qwen2, Phi-3 and Gemma architectures",
        )
    return dict(json.loads(quality.read_text()))


def export_compressed(
    source: str | Path, out_dir: Path | None, cfg: ExportConfig, log: Callable[[str], None]
) -> ExportResult:
    """merge -> llm-compressor GPTQ/AWQ INT4 -> measure the saved folder -> export.json + README."""
    from slmkit.export.agreement import load_prompt_set
    from slmkit.export.kld import default_heldout
    from slmkit.export.onnx import folder_size
    from slmkit.export.pipeline import ExportResult, merged_source, resolve_exportable
    from slmkit.export.quant_eval import LevelResult

    method = cfg.format
    resolved = resolve_exportable(source)
    tool_python()  # before any work
    out_dir = (out_dir or default_compressed_dir(resolved, method)).resolve()
    prompts, _ = load_prompt_set(cfg.prompts, cfg.max_prompts)
    hf_dir, steps, notes = merged_source(resolved, out_dir, cfg, log)
    calibration, measured = calibration_and_heldout(
        hf_dir, prompts, cfg.heldout or default_heldout()
    )
    stem = resolved.name.replace(" ", "-")
    folder = out_dir / f"{stem}-{method}-w4a16"
    job = {
        "model": str(hf_dir),
        "out": str(folder),
        "method": method,
        "calibration": calibration,
        "heldout": [] if cfg.skip_eval else measured,
        "max_length": MAX_LENGTH,
        "dtype": stored_dtype(hf_dir),
    }
    what = f"llm-compressor {method.upper()} INT4 (weights), {len(calibration)} calibration texts"
    with steps.step(method, what):
        quality = run_compressor(job)
    level = LevelResult(f"{method}-w4a16", str(folder), folder_size(folder))
    if not cfg.skip_eval:  # the thresholds the GGUF levels are held to
        t = cfg.thresholds
        ratio = quality["ppl"] / quality["ppl_reference"]
        level.problems += [
            problem
            for problem, bad in (
                (f"KLD {quality['kld']:.4f} > {t.max_kld}", quality["kld"] > t.max_kld),
                (f"top-1 {quality['top1']:.1%} < {t.min_top1:.0%}", quality["top1"] < t.min_top1),
                (f"PPL ratio {ratio:.3f} > {t.max_ppl_ratio}", ratio > t.max_ppl_ratio),
            )
            if bad
        ]
        level.within = not level.problems
    result = ExportResult(out_dir, folder.name, [level], steps.timings, None, None, notes)
    _write_manifest(result, resolved, cfg, quality)
    return result


def _write_manifest(
    result: ExportResult, resolved: Any, cfg: ExportConfig, quality: dict[str, Any]
) -> None:
    from slmkit import __version__
    from slmkit.export.pipeline import EXPORT_JSON, _base_ref

    level = result.files[0]
    manifest = {
        "format": cfg.format,
        "source": resolved.ref,
        "base_model": _base_ref(resolved),
        "recommended": result.recommended,
        "files": [
            {"level": level.level, "file": Path(level.file).name, "size_bytes": level.size_bytes}
        ],
        "quality": quality,
        "runtime": {"llmcompressor": LLMCOMPRESSOR_VERSION},
        "timings_s": result.timings_s,
        "config": cfg.model_dump(mode="json"),
        "notes": result.notes + level.problems,
        "slmkit": __version__,
    }
    (result.out_dir / EXPORT_JSON).write_text(json.dumps(manifest, indent=2, default=str))
    measured = (
        f"| {level.level} | {level.size_bytes / 2**20:.1f} MiB | {quality['kld']:.4f} | "
        f"{quality['top1']:.1%} | {quality['ppl']:.2f} (unquantized {quality['ppl_reference']:.2f}) |"
        if "kld" in quality
        else f"| {level.level} | {level.size_bytes / 2**20:.1f} MiB | - | - | - |"
    )
    (result.out_dir / "README.md").write_text(
        f"# {resolved.name} ({cfg.format.upper()} INT4, compressed-tensors)\n\n"
        f"Exported by `slm export --format {cfg.format}` from `{resolved.ref}` with llm-compressor "
        f"{LLMCOMPRESSOR_VERSION}: 4-bit integer weights in groups of "
        f"{quality.get('group_size')}, activations in 16 bits (W4A16).\n\n"
        "| folder | size | KLD vs unquantized | top-1 | perplexity |\n|---|---|---|---|---|\n"
        f"{measured}\n\n"
        "KLD = mean KL divergence per token on held-out text the calibration did not see.\n\n"
        "## Serve\n\n"
        f"```bash\nvllm serve ./{Path(level.file).name}\n"
        f"slm serve --engine vllm --model {resolved.name}=./{Path(level.file).name}\n```\n"
    )
