"""The final page of `slm run`: every stage, the headline numbers, links to the detailed reports,
and the commands that serve and chat with the result."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from slmkit.evaluate.report import img_tag
from slmkit.evaluate.verdict import VerdictRow, verdict_line


def next_commands(run_dir: Path, final: Path, stages: dict[str, Any]) -> list[str]:
    """The exact commands to chat with and serve the result."""
    cmds = [f'slm chat {_rel(final)} "How long do I have to return an item?"']
    export = stages.get("export")
    if export is not None:
        out = export.outputs
        cmds.append(
            f"slm serve --model support={_rel(Path(out['out_dir']) / out['recommended'])} --port 8000"
        )
    else:
        cmds.append(f"slm serve --model support={_rel(final)} --port 8000")
    return cmds


def write_pipeline_report(run_dir: Path, final: Path, stages: dict[str, Any]) -> dict[str, Any]:
    """Write RUN/report.json and RUN/report.html; return their paths."""
    summary = {
        "run_dir": str(run_dir),
        "final_model": str(final),
        "stages": {
            name: {"seconds": rec.seconds, **rec.outputs}
            for name, rec in stages.items()
            if name != "report"
        },
        "next": next_commands(run_dir, final, stages),
    }
    (run_dir / "report.json").write_text(json.dumps(summary, indent=2, default=str))
    page = run_dir / "report.html"
    page.write_text(_html(run_dir, summary))
    return {"html": str(page), "json": str(run_dir / "report.json")}


def _rel(path: Path) -> str:
    """Relative to the current directory when the path is below it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _link(target: str | None, run_dir: Path, text: str) -> str:
    if not target or not Path(target).exists():
        return ""
    return f'<a href="{html.escape(os.path.relpath(target, run_dir))}">{html.escape(text)}</a>'


def _html(run_dir: Path, summary: dict[str, Any]) -> str:
    stages = summary["stages"]
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{rec['seconds']:.0f}s</td><td>{_stage_detail(name, rec, run_dir)}</td></tr>"
        for name, rec in stages.items()
    )
    export = stages.get("export")
    loss = run_dir / "loss.png"
    loss_img = (
        img_tag(loss.read_bytes(), "loss curve") if loss.is_file() else "<p>no loss curve</p>"
    )
    commands = "\n".join(summary["next"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>slm run: {html.escape(run_dir.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;width:100%}}td,th{{border:1px solid #ccc;padding:6px;text-align:left;vertical-align:top}}
th{{background:#f3f3f3}}img{{max-width:100%}}pre{{background:#f6f6f6;padding:1em}}.pass{{color:#080}}.fail{{color:#b00}}</style>
</head><body><h1>slm run: {html.escape(run_dir.name)}</h1>
<p>Final model: <code>{html.escape(summary["final_model"])}</code></p>
{_eval_table(stages.get("evaluate"))}
{_quant_table(export)}
<h2>Stages</h2><table><tr><th>stage</th><th>time</th><th>result</th></tr>{rows}</table>
<h2>Training loss</h2>{loss_img}
<h2>Next</h2><pre>{html.escape(commands)}</pre></body></html>"""


def _bars(metric: str, main: dict[str, dict[str, Any]]) -> bytes | None:
    """Bar chart of the main metric per model with its confidence interval."""
    names = [n for n, v in main.items() if v.get("mean") is not None]
    if not names:
        return None
    from slmkit.evaluate.plots import _png, _pyplot

    plt = _pyplot()
    means = [float(main[n]["mean"]) for n in names]
    lows = [m - float(main[n].get("low", m)) for n, m in zip(names, means, strict=True)]
    highs = [float(main[n].get("high", m)) - m for n, m in zip(names, means, strict=True)]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = ax.bar(names, means, yerr=[lows, highs], capsize=4, color="#4c72b0")
    bars[0].set_color("#999999")  # the baseline
    for bar, mean, high in zip(bars, means, highs, strict=True):
        # above the error bar's cap, so the value never sits on the whisker
        ax.text(bar.get_x() + bar.get_width() / 2, mean + high + 0.02, f"{mean:.2f}", ha="center")
    ax.set_ylim(0, 1.18)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per model (95% CI)")
    return _png(fig)


def _quant_table(export: dict[str, Any] | None) -> str:
    """Size and measured damage of each quantization level, from the export's report.json."""
    if not export:
        return ""
    report = Path(export.get("out_dir", "")) / "report.json"
    if not report.is_file():
        return ""
    data = json.loads(report.read_text())
    rows = []
    for level in data.get("quant_eval", {}).get("levels", []):
        kld, rates = level.get("kld") or {}, level.get("rates") or {}
        verdict = (
            "within thresholds" if level.get("within") else "; ".join(level.get("problems", []))
        )
        rows.append(
            f"<tr><td>{html.escape(level['level'])}</td><td>{level['size_bytes'] / 1e6:.0f} MB</td>"
            f"<td>{_fmt(kld.get('mean_kld'))}</td><td>{_pct(kld.get('same_top1'))}</td>"
            f"<td>{_fmt(kld.get('ppl_ratio'))}</td><td>{_pct(rates.get('different'))}</td>"
            f"<td>{html.escape(verdict)}</td></tr>"
        )
    if not rows:
        return ""
    return (
        "<h2>Quantization (against the f16 GGUF)</h2><table><tr><th>level</th><th>size</th>"
        "<th>KLD</th><th>same top-1</th><th>PPL ratio</th><th>different answers</th><th>verdict</th></tr>"
        f"{''.join(rows)}</table><p>Recommended: <code>{html.escape(str(data.get('recommended')))}</code></p>"
    )


def _pct(value: Any) -> str:
    return "" if value is None else f"{100 * float(value):.1f}%"


def _eval_table(ev: dict[str, Any] | None) -> str:
    if not ev:
        return "<p>No evaluation in this recipe.</p>"
    metric = ev.get("main_metric", "fact_recall")
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{_fmt(vals.get('mean'))}</td>"
        f"<td>[{_fmt(vals.get('low'))}, {_fmt(vals.get('high'))}]</td></tr>"
        for name, vals in ev.get("main", {}).items()
    )
    verdict = "".join(
        f'<li class="{"pass" if row.get("status") == "PASS" or row.get("expected") else "fail"}">'
        f"{html.escape(verdict_line(VerdictRow(**row)))}</li>"
        for row in ev.get("verdict", [])
    )
    chart = img_tag(_bars(metric, ev.get("main", {})), f"{metric} per model")
    return (
        f"<h2>Evaluation: {html.escape(metric)}</h2>{chart}<table><tr><th>model</th><th>{html.escape(metric)}</th>"
        f"<th>95% CI</th></tr>{rows}</table><ul>{verdict}</ul>"
    )


def _stage_detail(name: str, rec: dict[str, Any], run_dir: Path) -> str:
    links = {
        "sft": _link(str(run_dir / "README.md"), run_dir, "model card"),
        "dpo": _link(str(Path(rec.get("run_dir", "")) / "README.md"), run_dir, "model card"),
        "export": _link(
            str(Path(rec.get("out_dir", "")) / "report.html"), run_dir, "quantization report"
        ),
        "evaluate": _link(rec.get("report_html"), run_dir, "evaluation report"),
    }.get(name, "")
    shown = {
        k: v
        for k, v in rec.items()
        if k not in ("seconds", "main", "verdict", "files") and not isinstance(v, dict)
    }
    return html.escape(", ".join(f"{k}={_fmt(v)}" for k, v in shown.items())) + (
        f" — {links}" if links else ""
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
