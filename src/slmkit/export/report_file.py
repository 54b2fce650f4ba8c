"""Read an export folder back (export.json, report.json): what `slm export` wrote, for the board."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.export.errors import ExportError
from slmkit.export.kld import KldStats
from slmkit.export.pipeline import EXPORT_JSON
from slmkit.export.quant_eval import LevelResult, QuantEvalResult, TaskScore

REPORT_JSON = "report.json"
DEPLOY_FILES = ("Modelfile", "serve.sh", "README.md")


@dataclass
class ExportFolder:
    """One export folder: its manifest, its quant eval (None when skipped) and the answers table."""

    path: Path
    manifest: dict[str, Any]
    quant_eval: QuantEvalResult | None
    answers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def recommended(self) -> str:
        return str(self.manifest.get("recommended", ""))

    def text(self, name: str) -> str:
        """A deploy file's text (Modelfile, serve.sh, README.md); empty when missing."""
        path = self.path / name
        return path.read_text(encoding="utf-8") if path.is_file() else ""

    def files(self) -> list[Path]:
        """Every file a user may want: GGUFs first (recommended first), then deploy files and reports."""
        ggufs = sorted(self.path.glob("*.gguf"), key=lambda p: (p.name != self.recommended, p.name))
        others = [self.path / n for n in (*DEPLOY_FILES, "report.html", REPORT_JSON, EXPORT_JSON)]
        return ggufs + [p for p in others if p.is_file()]


def is_export_folder(path: Path) -> bool:
    return (path / EXPORT_JSON).is_file()


def read_export_folder(path: Path) -> ExportFolder:
    """The export folder at `path`; an ExportError when `slm export` did not finish writing it."""
    try:
        manifest = json.loads((path / EXPORT_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(
            f"{path}: not a finished export folder (no readable {EXPORT_JSON})"
        ) from exc
    report_path = path / REPORT_JSON
    if not report_path.is_file():
        return ExportFolder(path, manifest, None)
    report = json.loads(report_path.read_text())
    return ExportFolder(
        path, manifest, quant_eval_from_json(report["quant_eval"]), report.get("answers", [])
    )


def quant_eval_from_json(data: dict[str, Any]) -> QuantEvalResult:
    """The inverse of `QuantEvalResult.to_json`."""
    return QuantEvalResult(
        reference=_level(data["reference"]),
        levels=[_level(level) for level in data["levels"]],
        recommended=data["recommended"],
        prompts=data.get("prompts", []),
        heldout=data.get("heldout", ""),
        ppl_ctx=int(data.get("ppl_ctx", 0)),
        notes=list(data.get("notes", [])),
    )


def _level(data: dict[str, Any]) -> LevelResult:
    values = dict(data)
    kld, task = values.pop("kld", None), values.pop("task", None)
    return LevelResult(
        **values,
        kld=KldStats(**kld) if kld else None,
        task=TaskScore(**task) if task else None,
    )
