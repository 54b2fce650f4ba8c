"""`slm export SOURCE`: merge -> convert -> check -> quantize -> parity gate -> quant eval -> deploy artefacts."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit import __version__
from slmkit.console import info
from slmkit.export.adapter_checks import check_adapter
from slmkit.export.agreement import Messages, load_prompt_set
from slmkit.export.config import ExportConfig
from slmkit.export.deploy import model_card, modelfile, server_command, split_template, stop_tokens
from slmkit.export.errors import ExportError
from slmkit.export.gguf_file import GgufExpectations, check_gguf, convert_to_gguf
from slmkit.export.merge import merge_adapter
from slmkit.export.parity import (
    ParityReport,
    compare_parity,
    enforce_parity,
    probe_gguf,
    torch_answers,
)
from slmkit.export.quant_eval import (
    LevelResult,
    QuantEvalResult,
    evaluate_quantization,
    labelled_answers,
)
from slmkit.export.quantize import quantize
from slmkit.export.report import quant_table_markdown, write_reports
from slmkit.models.load import refuse_reward_model
from slmkit.models.resolve import ResolvedModel, resolve_model
from slmkit.models.templates import default_template_kwargs
from slmkit.registry.hooks import record_export

EXPORT_JSON = "export.json"


@dataclass
class ExportResult:
    out_dir: Path
    recommended: str  # file name inside out_dir
    files: list[LevelResult]
    timings_s: dict[str, float] = field(default_factory=dict)
    quant_eval: QuantEvalResult | None = None
    parity: ParityReport | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _Steps:
    timings: dict[str, float] = field(default_factory=dict)
    log: Callable[[str], None] = info

    @contextmanager
    def step(self, name: str, what: str) -> Iterator[None]:
        self.log(f"[bold]{name}[/bold]: {what}")
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 2)
        self.log(f"  done in {self.timings[name]:.1f}s")


def default_out_dir(resolved: ResolvedModel) -> Path:
    if resolved.run_dir is not None:
        return resolved.run_dir / "export"
    return Path("exports") / resolved.name


def _hf_source(resolved: ResolvedModel) -> Path:
    if resolved.kind == "gguf":
        raise ExportError(
            f"{resolved.ref} is already a GGUF",
            hint="use `slm quant-eval REFERENCE.gguf QUANT.gguf ...`",
        )
    if isinstance(resolved.path, str):  # a hub id that is not in the cache
        raise ExportError(
            f"{resolved.ref} is not in the local Hugging Face cache",
            hint=f"run `slm pull {resolved.ref}` first",
        )
    return Path(resolved.path)


def resolve_exportable(source: str | Path) -> ResolvedModel:
    """Resolve `source` and refuse what cannot be exported, before any work."""
    resolved = resolve_model(source)
    refuse_reward_model(resolved)
    if resolved.adapter is None:
        _hf_source(resolved)
    else:
        check_adapter(resolved)
    return resolved


def merged_source(
    resolved: ResolvedModel, out_dir: Path, cfg: ExportConfig, log: Callable[[str], None]
) -> tuple[Path, _Steps, list[str]]:
    """For the ONNX and INT4 formats: the export folder made, the HF folder to build from (a run's
    adapter merged; no answers, each format measures against this folder), the timed steps and notes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = _Steps(log=log)
    notes: list[str] = []
    with steps.step("merge", f"{resolved.ref} -> HF folder ({cfg.merge_dtype})"):
        hf_dir, _, _ = _merged_folder(resolved, out_dir, cfg, None, notes)
    return hf_dir, steps, notes


def export_model(
    source: str | Path, out_dir: Path | None, cfg: ExportConfig, log: Callable[[str], None] = info
) -> ExportResult:
    """Run the whole export; returns where everything is and what is recommended."""
    if cfg.format == "onnx":
        from slmkit.export.onnx import export_onnx

        return export_onnx(source, out_dir, cfg, log)
    if cfg.format in ("gptq", "awq"):
        from slmkit.export.compressor import export_compressed

        return export_compressed(source, out_dir, cfg, log)
    resolved = resolve_exportable(source)
    out_dir = (out_dir or default_out_dir(resolved)).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = _Steps(log=log)
    prompts, items = load_prompt_set(cfg.prompts, cfg.max_prompts)
    with_eval = not cfg.skip_eval
    notes: list[str] = []
    with steps.step("merge", f"{resolved.ref} -> HF folder ({cfg.merge_dtype})"):
        hf_dir, reference_answers, merged_answers = _merged_folder(
            resolved, out_dir, cfg, prompts if with_eval else None, notes
        )
    stem = resolved.name.replace(" ", "-")
    reference = out_dir / f"{stem}-{cfg.outtype}.gguf"
    with steps.step(
        "convert", f"convert_hf_to_gguf.py --outtype {cfg.outtype}, then check metadata"
    ):
        convert_to_gguf(hf_dir, reference, cfg.outtype)
        checked = check_gguf(reference, GgufExpectations.from_hf_dir(hf_dir))
    files: list[LevelResult] = [LevelResult(cfg.outtype, str(reference), reference.stat().st_size)]
    with steps.step("quantize", ", ".join(cfg.quants) or "no levels"):
        for level in cfg.quants:
            q = quantize(reference, level, out_dir / f"{stem}-{level}.gguf", threads=cfg.threads)
            files.append(
                LevelResult(level, str(q.path), q.size_bytes, fallback_tensors=q.fallback_tensors)
            )
    parity = quant_result = None
    if with_eval:
        with steps.step("parity", "base+adapter (PyTorch) vs merged vs GGUF f16 at temperature 0"):
            parity = _parity_gate(
                hf_dir, reference, prompts, reference_answers, merged_answers, cfg
            )
        with steps.step(
            "quant_eval", "KLD / top-1 / PPL on held-out text, answer agreement on the eval prompts"
        ):
            quant_result = evaluate_quantization(
                files[0],
                files[1:],
                prompts,
                cfg,
                hf_dir=hf_dir,
                reference_answers=parity.gguf_answers,
                items=items,
            )
    # without measurements, the mildest quantization (files[1], usually q8_0) is the safe suggestion
    recommended = Path(
        quant_result.recommended if quant_result else files[min(1, len(files) - 1)].file
    ).name
    result = ExportResult(out_dir, recommended, files, steps.timings, quant_result, parity, notes)
    _write_artefacts(result, resolved, hf_dir, checked, cfg)
    source = (
        resolved.ref if resolved.ref.startswith("@") else str(resolved.run_dir or resolved.path)
    )
    record_export(out_dir, source, [Path(f.file) for f in files])  # a registry problem only warns
    return result


def _merged_folder(
    resolved: ResolvedModel,
    out_dir: Path,
    cfg: ExportConfig,
    prompts: list[Messages] | None,
    notes: list[str],
) -> tuple[Path, list[str], list[str]]:
    """The HF folder to convert, and PyTorch answers (base+adapter, merged) for the parity gate."""
    if resolved.adapter is not None:
        merged = merge_adapter(
            resolved,
            out_dir / "merged",
            dtype=cfg.merge_dtype,
            atol=cfg.thresholds.merge_atol,
            prompts=prompts,
            max_tokens=cfg.max_tokens,
        )
        notes += merged.notes
        if prompts is not None and not merged.reference_answers:  # merged shard by shard
            return merged.out_dir, [], []
        notes.append(
            f"merge check: max |logit diff| {merged.max_logit_diff:.1e} (fp32); saved {cfg.merge_dtype} "
            f"folder top-1 agreement {merged.saved_top1:.1%}"
        )
        return merged.out_dir, merged.reference_answers, merged.merged_answers
    hf_dir = _hf_source(resolved)
    if prompts is None:
        return hf_dir, [], []
    from slmkit.models.load import load_model

    model, tokenizer = load_model(resolved)
    answers = torch_answers(model, tokenizer, prompts, cfg.max_tokens)
    del model
    return hf_dir, answers, answers


def _parity_gate(
    hf_dir: Path,
    reference: Path,
    prompts: list[Messages],
    reference_answers: list[str],
    merged_answers: list[str],
    cfg: ExportConfig,
) -> ParityReport:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    probe = probe_gguf(reference, prompts, max_tokens=cfg.max_tokens, threads=cfg.threads)
    if not reference_answers:  # no PyTorch answers (a streamed merge): template and tokens only
        reference_answers = merged_answers = probe.answers
    report = compare_parity(
        prompts, tokenizer, reference_answers, merged_answers, probe, cfg.thresholds
    )
    enforce_parity(report, prompts, cfg.thresholds, cfg.force)
    return report


def _write_artefacts(
    result: ExportResult,
    resolved: ResolvedModel,
    hf_dir: Path,
    checked: dict[str, Any],
    cfg: ExportConfig,
) -> None:
    from transformers import AutoTokenizer

    out = result.out_dir
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    if isinstance(tokenizer.chat_template, str):
        (out / "chat_template.jinja").write_text(tokenizer.chat_template)
    parts = split_template(tokenizer) if tokenizer.chat_template else None
    if parts is not None and not parts.verified:
        result.notes.append(
            "the Ollama TEMPLATE translation does not reproduce the chat template exactly; prefer llama-server"
        )
    stops = stop_tokens(tokenizer, parts)
    ctx = int(min(checked.get("context_length") or 4096, 4096))
    (out / "Modelfile").write_text(modelfile(result.recommended, parts, stops, ctx))
    kwargs = default_template_kwargs(tokenizer.chat_template) if tokenizer.chat_template else {}
    command = server_command(result.recommended, ctx, kwargs=kwargs)
    (out / "serve.sh").write_text(
        f"#!/usr/bin/env bash\n# Serve the recommended GGUF (run in this folder)\n{command}\n"
    )
    (out / "serve.sh").chmod(0o755)
    table = quant_table_markdown(result.quant_eval) if result.quant_eval else "(quant eval skipped)"
    notes = result.notes + (result.quant_eval.notes if result.quant_eval else [])
    (out / "README.md").write_text(
        model_card(resolved.name, resolved.ref, table, result.recommended, command, notes)
    )
    manifest = {
        "source": resolved.ref,
        "base_model": _base_ref(resolved),
        "recommended": result.recommended,
        "files": [
            {"level": f.level, "file": Path(f.file).name, "size_bytes": f.size_bytes}
            for f in result.files
        ],
        "gguf_check": checked,
        "stop": stops,
        "server_command": command,
        "timings_s": result.timings_s,
        "thresholds": cfg.thresholds.model_dump(),
        "config": cfg.model_dump(mode="json"),
        "notes": notes,
        "parity": result.parity.to_json() if result.parity else None,
        "slmkit": __version__,
        "ollama_template_verified": bool(parts and parts.verified),
    }
    (out / EXPORT_JSON).write_text(json.dumps(manifest, indent=2, default=str))
    if result.quant_eval is not None:
        write_reports(
            out, result.quant_eval, manifest, labelled_answers(result.quant_eval, cfg.thresholds)
        )


def _base_ref(resolved: ResolvedModel) -> str | None:
    manifest = resolved.extra.get("manifest")
    return str(manifest.get("base_model")) if isinstance(manifest, dict) else resolved.ref


def quant_eval_files(
    reference: Path,
    quants: list[Path],
    cfg: ExportConfig,
    out_dir: Path,
    hf_dir: Path | None = None,
) -> QuantEvalResult:
    """`slm quant-eval`: evaluate existing GGUF files against a reference GGUF; writes report.json/html."""
    for path in [reference, *quants]:
        if not path.is_file():
            raise ExportError(f"GGUF file {path} not found")
    prompts, items = load_prompt_set(cfg.prompts, cfg.max_prompts)
    ref = LevelResult(_level_name(reference), str(reference), reference.stat().st_size)
    levels = [LevelResult(_level_name(q), str(q), q.stat().st_size) for q in quants]
    result = evaluate_quantization(ref, levels, prompts, cfg, hf_dir=hf_dir, items=items)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_reports(
        out_dir, result, {"source": str(reference)}, labelled_answers(result, cfg.thresholds)
    )
    return result


def _level_name(path: Path) -> str:
    stem = path.stem.lower()
    return stem.rsplit("-", 1)[-1] if "-" in stem else stem


def remove_merged(out_dir: Path) -> None:
    shutil.rmtree(out_dir / "merged", ignore_errors=True)
