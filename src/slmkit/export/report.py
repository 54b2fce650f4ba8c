"""The quant table (terminal + markdown), report.json and report.html with a size-vs-quality plot."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from slmkit.export.quant_eval import LevelResult, QuantEvalResult


def _verdict(level: LevelResult, recommended: str) -> str:
    if level.level in ("f16", "bf16", "f32"):
        verdict = "reference"
    else:
        verdict = "ok" if level.within else "outside"
    if Path(level.file).name == Path(recommended).name:
        verdict = "recommended" + ("" if verdict in ("ok", "reference") else f" ({verdict})")
    return verdict


def _task_cell(level: LevelResult) -> str:
    task = level.task
    if task is None:
        return "-"
    if level.level in ("f16", "bf16", "f32"):
        return f"{task.mean:.3f} [{task.low:.2f}, {task.high:.2f}]"
    return f"{task.delta:+.3f} [{task.delta_low:+.2f}, {task.delta_high:+.2f}]"


def _row(level: LevelResult, recommended: str, with_task: bool) -> list[str]:
    kld, rates = level.kld, level.rates
    cells = [
        level.level,
        f"{level.size_bytes / 1e6:.0f} MB",
        f"{kld.mean_kld:.4f}" if kld else "-",
        f"{kld.same_top1:.1%}" if kld else "-",
        f"{kld.ppl_ratio:.3f}" if kld else "-",
    ]
    if with_task:
        cells.append(_task_cell(level))
    answers = "/".join(f"{rates.get(k, 0):.0%}" for k in ("exact", "similar", "different"))
    return [*cells, answers if rates else "-", _verdict(level, recommended)]


def problem_lines(result: QuantEvalResult) -> list[str]:
    """One line per level outside thresholds, naming every broken threshold."""
    return [f"{lv.level}: {'; '.join(lv.problems)}" for lv in result.levels if lv.problems]


def headers(result: QuantEvalResult) -> list[str]:
    """Table columns; the task-metric column only when the prompts were an eval set."""
    task = result.reference.task
    metric = [f"{task.metric}: f16, Δ [{task.confidence:.0%} CI]"] if task else []
    return [
        "level",
        "size",
        "KLD",
        "top-1",
        "PPL ratio",
        *metric,
        "exact/similar/different (info)",
        "verdict",
    ]


def table_rows(result: QuantEvalResult) -> list[list[str]]:
    with_task = result.reference.task is not None
    return [_row(lv, result.recommended, with_task) for lv in [result.reference, *result.levels]]


def quant_table(result: QuantEvalResult) -> Table:
    table = Table(*headers(result), title="Quantization vs the reference GGUF")
    for level, row in zip([result.reference, *result.levels], table_rows(result), strict=True):
        table.add_row(*row, style=None if level.within else "red")
    return table


def quant_table_markdown(result: QuantEvalResult) -> str:
    columns = headers(result)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    return "\n".join(lines)


def size_quality_png(result: QuantEvalResult) -> bytes:
    """Size (MB) against mean KLD and top-1 agreement, one point per level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [lv for lv in [result.reference, *result.levels] if lv.kld is not None]
    sizes = [lv.size_bytes / 1e6 for lv in levels]
    fig, (ax_kld, ax_top) = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, values, label in (
        (
            ax_kld,
            [lv.kld.mean_kld for lv in levels if lv.kld],
            "mean KLD vs reference (lower is better)",
        ),
        (
            ax_top,
            [lv.kld.same_top1 * 100 for lv in levels if lv.kld],
            "same top-1 token, % (higher is better)",
        ),
    ):
        ax.plot(sizes, values, "o-")
        for lv, x, y in zip(levels, sizes, values, strict=True):
            ax.annotate(lv.level, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("file size (MB)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_reports(
    out_dir: Path, result: QuantEvalResult, extra: dict[str, Any], answers: list[dict[str, Any]]
) -> tuple[Path, Path]:
    """report.json (everything) and report.html (table, plot, answers side by side)."""
    report = {**extra, "quant_eval": result.to_json(), "answers": answers}
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    png = base64.b64encode(size_quality_png(result)).decode()
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        for row in table_rows(result)
    )
    answer_rows = "".join(_answer_row(a, [lv.level for lv in result.levels]) for a in answers)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in [*problem_lines(result), *result.notes])
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers(result))
    level_heads = "".join(f"<th>{html.escape(lv.level)}</th>" for lv in result.levels)
    html_path = out_dir / "report.html"
    html_path.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>slm export report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}}
.different{{background:#fdd}}.similar{{background:#ffd}}.exact{{background:#dfd}}</style></head><body>
<h1>Export report</h1><p>Source: <code>{html.escape(str(extra.get("source", "")))}</code>. Recommended: <b>{html.escape(Path(result.recommended).name)}</b>.
Held-out text: <code>{html.escape(result.heldout)}</code> (context {result.ppl_ctx}).</p>
<table><tr>{head}</tr>{rows}</table>
<h2>Size vs quality</h2><img alt="size vs quality" src="data:image/png;base64,{png}">
<h2>Notes</h2><ul>{notes}</ul>
<h2>Answers at temperature 0</h2><table><tr><th>prompt</th><th>reference</th>{level_heads}</tr>{answer_rows}</table>
</body></html>
""")
    return json_path, html_path


def _answer_row(answer: dict[str, Any], levels: list[str]) -> str:
    cells = [
        f"<td>{html.escape(answer['prompt'])}</td>",
        f"<td>{html.escape(answer['reference'])}</td>",
    ]
    for level in levels:
        item = answer[level]
        cells.append(
            f'<td class="{item["label"]}">{html.escape(item["answer"])}<br><i>{item["label"]}</i></td>'
        )
    return "<tr>" + "".join(cells) + "</tr>"
