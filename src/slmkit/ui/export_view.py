"""What the Export tab shows: the `slm export` command line it starts, and the tables, deploy files
and download links read back from the export folder that command wrote."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from slmkit.errors import ConfigError
from slmkit.export.config import ExportConfig, export_config
from slmkit.export.report import headers, problem_lines, table_rows
from slmkit.export.report_file import ExportFolder, is_export_folder
from slmkit.train.run_index import list_runs
from slmkit.ui.charts import typed_frame

BASE_CHOICE = ("default (the embedded base model)", "default")


def source_choices(runs_dir: Path) -> list[tuple[str, str]]:
    """The embedded model and every run folder (any other HF folder can be typed in)."""
    runs = [(f"{_short(Path(r.path), runs_dir)} ({r.status})", r.path) for r in list_runs(runs_dir)]
    return [BASE_CHOICE, *runs]


def export_folders(exports_dir: Path, runs_dir: Path) -> list[tuple[str, str]]:
    """Finished export folders, the board's own and those inside run folders (RUN/export), newest first."""
    found = (
        [p for p in exports_dir.iterdir() if is_export_folder(p)] if exports_dir.is_dir() else []
    )
    found += [p for r in list_runs(runs_dir) if is_export_folder(p := Path(r.path) / "export")]
    found.sort(key=lambda p: (p / "export.json").stat().st_mtime, reverse=True)
    return [
        (_short(p, exports_dir if p.is_relative_to(exports_dir) else runs_dir), str(p))
        for p in found
    ]


def _short(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def new_export_dir(exports_dir: Path, source: str) -> Path:
    """A fresh folder per export: SOURCE-NAME-YYYYmmdd-HHMMSS."""
    name = Path(source.rstrip("/")).name or "model"
    return exports_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def export_argv(
    source: str,
    quants: list[str],
    out_dir: Path,
    *,
    prompts: str = "",
    max_prompts: float | None = None,
    skip_eval: bool = False,
    force: bool = False,
) -> list[str]:
    """`export SOURCE --quant … -o OUT …`; settings are checked by the CLI's own ExportConfig first."""
    if not source.strip():
        raise ConfigError("pick a model to export (a run folder, an HF folder or `default`)")
    cfg = export_config(
        quants=",".join(quants),
        prompts=prompts.strip() or None,
        max_prompts=int(max_prompts) if max_prompts is not None else None,
    )
    argv = ["export", source.strip(), "--quant", ",".join(cfg.quants), "-o", str(out_dir)]
    if cfg.prompts is not None:
        argv += ["--prompts", str(Path(cfg.prompts).expanduser().resolve())]
    if cfg.max_prompts != ExportConfig.model_fields["max_prompts"].default:
        argv += ["--max-prompts", str(cfg.max_prompts)]
    return argv + (["--skip-eval"] if skip_eval else []) + (["--force"] if force else [])


def quant_frame(folder: ExportFolder) -> Any:
    """The quant table exactly as `slm export` prints it (level, size, KLD, top-1, PPL, answers, verdict)."""
    result = folder.quant_eval
    if result is None:
        return typed_frame([], {"level": object, "file": object})
    columns = headers(result)
    rows = [dict(zip(columns, row, strict=True)) for row in table_rows(result)]
    return typed_frame(rows, {c: object for c in columns})


def answers_frame(folder: ExportFolder) -> Any:
    """Per eval prompt: the reference GGUF's temperature-0 answer and each level's, with its label."""
    levels = [lv.level for lv in folder.quant_eval.levels] if folder.quant_eval else []
    columns = {"prompt": object, "reference": object, **{lv: object for lv in levels}}
    rows = [
        {
            "prompt": a["prompt"],
            "reference": a["reference"],
            **{lv: f"[{a[lv]['label']}] {a[lv]['answer']}" for lv in levels},
        }
        for a in folder.answers
    ]
    return typed_frame(rows, columns)


def recommendation_markdown(folder: ExportFolder) -> str:
    """The recommendation, what is outside thresholds and the report's notes."""
    lines = [f"**Recommended: `{folder.recommended}`** (folder `{folder.path}`)"]
    result = folder.quant_eval
    if result is None:
        lines.append("Quant eval was skipped: the mildest level is suggested without measurements.")
        return "\n\n".join(lines)
    lines += [f"- outside thresholds: {line}" for line in problem_lines(result)]
    lines += [f"- {note}" for note in result.notes]
    return "\n".join([*lines[:1], "", *lines[1:]])


def file_links(paths: list[Path], title: str = "files") -> str:
    """Download links to files the board serves (its runs and work folders are allowed paths)."""
    items = "".join(
        f'<li><a href="/gradio_api/file={quote(str(p))}" download="{html.escape(p.name)}">'
        f"{html.escape(p.name)}</a> <span style='color:#6b7280'>({_size(p)})</span></li>"
        for p in paths
    )
    return (
        f"<div class='slm-files'><b>{html.escape(title)}</b><ul>{items}</ul></div>" if items else ""
    )


def _size(path: Path) -> str:
    size = float(path.stat().st_size)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""
