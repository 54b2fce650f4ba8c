"""`slm export --format onnx`: the merged model as ONNX Runtime GenAI folders (fp32 / int8 / int4).

All three come from onnxruntime-genai's model builder (`onnxruntime_genai.models.builder`): a
decoder graph with GroupQueryAttention and a KV cache, `genai_config.json`, the tokenizer and the
chat template beside it; int8 and int4 are weight-only block-wise quantization (`MatMulNBits`).
Measured on the embedded model against the fp32 graph (top-1 agreement on held-out text): builder
int8 95-100%, `onnxruntime.quantization.quantize_dynamic` INT8 (activations quantized too) 52%, so
int8 is the builder's. optimum-onnx is not used: its release pins transformers < 4.58, and this
project runs on transformers 5.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from slmkit.export.errors import ExportError

if TYPE_CHECKING:
    from slmkit.export.config import ExportConfig
    from slmkit.export.pipeline import ExportResult
    from slmkit.export.quant_eval import QuantEvalResult
    from slmkit.models.resolve import ResolvedModel

ONNX_PRECISIONS = ("fp32", "int8", "int4")
GENAI_CONFIG = "genai_config.json"
MODEL_FILE = "model.onnx"


@dataclass
class OnnxBuild:
    precision: str
    folder: Path
    size_bytes: int


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def is_onnx_folder(path: Path) -> bool:
    """An ONNX Runtime GenAI model folder: `genai_config.json` beside the graph."""
    return (path / GENAI_CONFIG).is_file() and (path / MODEL_FILE).is_file()


def _require_runtime() -> None:
    try:
        import onnxruntime  # noqa: F401
        import onnxruntime_genai  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"--format onnx needs onnxruntime and onnxruntime-genai ({exc.name} is not installed)",
            hint="run scripts/setup.sh (it installs them)",
        ) from exc


def run_builder(hf_dir: Path, out: Path, precision: str, cache: Path) -> None:
    """onnxruntime-genai's model builder in a child process (it loads the whole model; its memory goes with it)."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder"]
    cmd += ["-i", str(hf_dir), "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(cache)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not is_onnx_folder(out):
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {done.returncode}"
        raise ExportError(
            f"ONNX model builder failed for {hf_dir} at {precision}: {last}",
            hint="only architectures the builder knows (llama, qwen, phi, gemma, mistral, ...) export to ONNX",
        )


def build_onnx(hf_dir: Path, out_dir: Path, stem: str, precisions: list[str]) -> list[OnnxBuild]:
    """One folder per precision, `out_dir/STEM-onnx-PRECISION/`, in the order fp32, int8, int4."""
    _require_runtime()
    builds: list[OnnxBuild] = []
    with tempfile.TemporaryDirectory(prefix="slm-onnx-") as tmp:
        for precision in sorted(precisions, key=ONNX_PRECISIONS.index):
            folder = out_dir / f"{stem}-onnx-{precision}"
            shutil.rmtree(folder, ignore_errors=True)
            run_builder(hf_dir, folder, precision, Path(tmp) / "cache")
            builds.append(OnnxBuild(precision, folder, folder_size(folder)))
    return builds


def default_onnx_dir(resolved: ResolvedModel) -> Path:
    if resolved.run_dir is not None:
        return resolved.run_dir / "export-onnx"
    return Path("exports") / f"{resolved.name}-onnx"


def export_onnx(
    source: str | Path, out_dir: Path | None, cfg: ExportConfig, log: Callable[[str], None]
) -> ExportResult:
    """merge -> ONNX build per precision -> measure each against PyTorch fp32 -> export.json + report."""
    from slmkit.export.agreement import load_prompt_set
    from slmkit.export.onnx_eval import OnnxEvalInputs, evaluate_onnx
    from slmkit.export.pipeline import ExportResult, merged_source, resolve_exportable
    from slmkit.export.quant_eval import LevelResult

    resolved = resolve_exportable(source)
    out_dir = (out_dir or default_onnx_dir(resolved)).resolve()
    prompts, items = load_prompt_set(cfg.prompts, cfg.max_prompts)
    # the ONNX eval takes PyTorch's answers from the merged folder it measures against
    hf_dir, steps, notes = merged_source(resolved, out_dir, cfg, log)
    stem = resolved.name.replace(" ", "-")
    with steps.step("onnx", f"ONNX Runtime GenAI build: {', '.join(cfg.onnx_precisions)}"):
        builds = build_onnx(hf_dir, out_dir, stem, cfg.onnx_precisions)
    files = [LevelResult(f"onnx-{b.precision}", str(b.folder), b.size_bytes) for b in builds]
    quant_result = None
    if not cfg.skip_eval:
        with steps.step("onnx_eval", "KLD / top-1 / PPL vs PyTorch fp32, answer agreement"):
            inputs = OnnxEvalInputs(hf_dir, prompts, items)
            quant_result = evaluate_onnx(builds, inputs, cfg)
            files = quant_result.levels
    recommended = Path(_recommended(quant_result, builds, notes)).name
    result = ExportResult(out_dir, recommended, files, steps.timings, quant_result, None, notes)
    _write_onnx_manifest(result, resolved, cfg)
    return result


def _recommended(
    quant_result: QuantEvalResult | None, builds: list[OnnxBuild], notes: list[str]
) -> str:
    """The smallest precision within thresholds; else the most precise one built (never PyTorch)."""
    folders = [str(b.folder) for b in builds]
    if quant_result is not None and quant_result.recommended in folders:
        return quant_result.recommended
    if quant_result is not None:
        notes.append(
            f"no ONNX precision is within thresholds; recommended the most precise built ({builds[0].precision})"
        )
    return folders[0]


def _write_onnx_manifest(result: ExportResult, resolved: ResolvedModel, cfg: ExportConfig) -> None:
    from slmkit import __version__
    from slmkit.export.pipeline import EXPORT_JSON, _base_ref
    from slmkit.export.quant_eval import labelled_answers
    from slmkit.export.report import write_reports

    qe = result.quant_eval
    notes = result.notes + (qe.notes if qe else [])
    manifest = {
        "format": "onnx",
        "source": resolved.ref,
        "base_model": _base_ref(resolved),
        "recommended": result.recommended,
        "files": [
            {"level": f.level, "file": Path(f.file).name, "size_bytes": f.size_bytes}
            for f in result.files
        ],
        "runtime": runtime_versions(),
        "timings_s": result.timings_s,
        "thresholds": cfg.thresholds.model_dump(),
        "config": cfg.model_dump(mode="json"),
        "notes": notes,
        "slmkit": __version__,
    }
    (result.out_dir / EXPORT_JSON).write_text(json.dumps(manifest, indent=2, default=str))
    if qe is not None:
        write_reports(result.out_dir, qe, manifest, labelled_answers(qe, cfg.thresholds))


def runtime_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("onnxruntime", "onnxruntime-genai")}
