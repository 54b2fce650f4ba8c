"""PASS/FAIL per criterion: gains over the first model, absolute floors and ceilings, quantization KLD."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from slmkit.evaluate.config import Criteria
from slmkit.models import ResolvedModel

Status = Literal["PASS", "FAIL", "SKIP"]


@dataclass
class VerdictRow:
    """One criterion checked on one model."""

    model: str
    criterion: str
    required: str
    measured: str
    status: Status
    # why a FAIL was foreseen and does not count against the whole (e.g. the quant its export
    # advised against); empty for every other row
    expected: str = ""

    @property
    def shown_status(self) -> str:
        """The status as reports print it: an expected FAIL says so."""
        return (
            f"{self.status} (expected)" if self.status == "FAIL" and self.expected else self.status
        )


def judge_criteria(
    criteria: Criteria,
    names: list[str],
    values: dict[str, dict[str, float | None]],
    klds: dict[str, float | None],
    advised_against: dict[str, str] | None = None,
) -> list[VerdictRow]:
    """Rows for every criterion and every model it applies to (default: all but the first).
    `advised_against`: model -> why its export advised against it; its KLD FAIL is expected."""
    if criteria.is_empty():
        return []
    first = names[0]
    targets = criteria.apply_to if criteria.apply_to is not None else names[1:] or names
    rows: list[VerdictRow] = []
    for model in targets:
        for metric, gain in criteria.min_gain.items():
            now, base = values[model].get(metric), values[first].get(metric)
            delta = None if now is None or base is None else now - base
            rows.append(
                _row(
                    model,
                    f"{metric} gain vs {first}",
                    f">= {gain:+.3f}",
                    delta,
                    lambda d, g=gain: d >= g - 1e-12,
                    signed=True,
                )
            )
        for metric, floor in criteria.min.items():
            rows.append(
                _row(
                    model,
                    metric,
                    f">= {floor:.3f}",
                    values[model].get(metric),
                    lambda v, f=floor: v >= f - 1e-12,
                )
            )
        for metric, ceiling in criteria.max.items():
            rows.append(
                _row(
                    model,
                    metric,
                    f"<= {ceiling:.3f}",
                    values[model].get(metric),
                    lambda v, c=ceiling: v <= c + 1e-12,
                )
            )
    if criteria.max_kld is not None:
        limit = criteria.max_kld
        measured = {m: k for m, k in klds.items() if k is not None and m in targets}
        if not measured:
            rows.append(
                VerdictRow(
                    "-",
                    "quantization KLD",
                    f"<= {limit:.4f}",
                    "no quantized export in the comparison",
                    "SKIP",
                )
            )
        for model, kld in measured.items():
            row = _row(
                model, "quantization KLD vs f16", f"<= {limit:.4f}", kld, lambda v: v <= limit
            )
            if row.status == "FAIL":
                row.expected = (advised_against or {}).get(model, "")
            rows.append(row)
    return rows


def _row(
    model: str, criterion: str, required: str, value: float | None, ok, signed: bool = False
) -> VerdictRow:  # type: ignore[no-untyped-def]
    if value is None:
        return VerdictRow(model, criterion, required, "not measured", "FAIL")
    shown = f"{value:+.3f}" if signed else f"{value:.4f}" if abs(value) < 0.1 else f"{value:.3f}"
    return VerdictRow(model, criterion, required, shown, "PASS" if ok(value) else "FAIL")


def _export_level(resolved: ResolvedModel) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(its export's report.json, this GGUF's quant eval level; {} for the reference file)."""
    if resolved.gguf is None or resolved.kind != "gguf":
        return None
    report = Path(resolved.gguf).parent / "report.json"
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        return None
    quant = data.get("quant_eval") or {}
    name = Path(resolved.gguf).name
    reference = (quant.get("reference") or {}).get("file")
    if reference and Path(str(reference)).name == name:
        return data, {}
    for level in quant.get("levels") or []:
        if Path(str(level.get("file", ""))).name == name:
            return data, level
    return None


def export_kld(resolved: ResolvedModel) -> float | None:
    """Mean KLD of a GGUF against its export's f16 file, from the export folder's report.json."""
    found = _export_level(resolved)
    if found is None:
        return None
    level = found[1]
    if not level:
        return 0.0
    kld = (level.get("kld") or {}).get("mean_kld")
    return float(kld) if kld is not None else None


def export_advice(resolved: ResolvedModel) -> str:
    """Why the export advised against this GGUF ("" when it did not): its quant eval found it
    outside the thresholds."""
    found = _export_level(resolved)
    if found is None or not found[1] or found[1].get("within", True):
        return ""
    data, level = found
    problems = "; ".join(str(p) for p in level.get("problems") or []) or "outside its thresholds"
    advice = f"`slm export` advised against this level ({problems})"
    recommended = data.get("recommended")
    return f"{advice} and recommends {recommended}" if recommended else advice


def passed(rows: list[VerdictRow]) -> bool:
    """Every criterion met, but for the FAILs that were foreseen (`expected`)."""
    return all(row.status != "FAIL" or row.expected for row in rows)


def verdict_line(row: VerdictRow) -> str:
    """One line per verdict row, as `slm eval` and `slm run` print it."""
    line = (
        f"{row.shown_status}: {row.model} {row.criterion} "
        f"(required {row.required}, measured {row.measured})"
    )
    return f"{line}: {row.expected}" if row.expected else line
