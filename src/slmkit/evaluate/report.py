"""report.json for machines and a self-contained report.html (plots embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from slmkit import __version__
from slmkit.evaluate import plots
from slmkit.evaluate.config import QUALITY_METRICS
from slmkit.evaluate.retrieval import retrieval_data, retrieval_section

if TYPE_CHECKING:
    from slmkit.evaluate.run import EvalResult, ModelResult

TABLE_METRICS = (
    *QUALITY_METRICS,
    "forbidden_rate",
    "length_words",
    "latency_p50_s",
    "latency_p95_s",
    "tokens_per_s",
)
SIDE_BY_SIDE = 6
DIGITS = {"length_words": 1, "tokens_per_s": 1, "latency_p50_s": 2, "latency_p95_s": 2}
STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.PASS{background:#d8f5d8;font-weight:bold}.FAIL{background:#fbd5d5;font-weight:bold}.SKIP{background:#eee}
.hit{background:#e7f7e7}.miss{background:#fdecec}img{max-width:100%}code{background:#f5f5f5;padding:0 3px}"""


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_report(result: EvalResult) -> None:
    result.config.out_dir.mkdir(parents=True, exist_ok=True)
    result.report_json.write_text(json.dumps(report_data(result), indent=2, default=str))
    result.report_html.write_text(render_html(result), encoding="utf-8")


def report_data(result: EvalResult) -> dict[str, Any]:
    names = [m.name for m in result.models]
    return {
        "slmkit": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": str(result.config.data),
        "n_items": len(result.items),
        "main_metric": result.main_metric,
        "settings": result.config.model_dump(mode="json", exclude={"models", "data", "out_dir"}),
        "models": [
            {
                "name": m.name,
                "ref": m.ref,
                "kind": m.kind,
                "engine": m.engine,
                "metrics": m.summary.values,
                "main": m.main,
                "by_tag": m.summary.by_tag,
                "generated": m.generated,
                "cached": len(m.generations) - m.generated,
                "kld": m.kld,
                "run_dir": str(m.run_dir) if m.run_dir else None,
            }
            for m in result.models
        ],
        "items": [
            {
                "line": item.line,
                "id": item.id,
                "messages": item.messages,
                "reference": item.reference,
                "must_include": item.must_include,
                "must_not_include": item.must_not_include,
                "tags": item.tags,
                "answers": {
                    name: {**asdict(m.generations[i]), "scores": asdict(m.scores[i])}
                    for name, m in zip(names, result.models, strict=True)
                },
            }
            for i, item in enumerate(result.items)
        ],
        "verdict": [asdict(row) for row in result.verdict],
        "passed": result.passed,
        "notes": result.notes,
        "retrieval": retrieval_data(result.retrieval) if result.retrieval else None,
    }


def img_tag(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{classes[i] if classes else ""}">' + "".join(rows[i]) + "</tr>"
        for i in range(len(rows))
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _td(text: str, cls: str = "") -> str:
    return f'<td class="{cls}">{html.escape(text)}</td>'


def summary_table(result: EvalResult) -> str:
    shown = [
        m
        for m in TABLE_METRICS
        if m != result.main_metric
        and any(r.summary.values.get(m) is not None for r in result.models)
    ]
    level = f"{result.config.confidence:.0%}"
    headers = [
        "model",
        "ref",
        "engine",
        f"{result.main_metric} ({level} CI)",
        f"Δ vs {result.models[0].name} ({level} CI)",
        *shown,
    ]
    rows = []
    for m in result.models:
        main = m.main
        ci = f"{fmt(main.get('mean'))} [{fmt(main.get('low'))}, {fmt(main.get('high'))}]"
        delta = (
            "-"
            if "delta" not in main
            else f"{main['delta']:+.3f} [{main['delta_low']:+.3f}, {main['delta_high']:+.3f}]"
        )
        rows.append(
            [_td(m.name), _td(m.ref), _td(m.engine), _td(ci, "num"), _td(delta, "num")]
            + [_td(fmt(m.summary.values.get(k), DIGITS.get(k, 3)), "num") for k in shown]
        )
    return _table(headers, rows)


def tag_table(result: EvalResult) -> str:
    tags = sorted({t for item in result.items for t in item.tags})
    if not tags:
        return "<p>No tags in this eval set.</p>"
    rows = []
    for tag in tags:
        n = int(result.models[0].summary.by_tag[tag].get("n") or 0)
        cells = [
            _td(fmt(m.summary.by_tag[tag].get(result.main_metric)), "num") for m in result.models
        ]
        rows.append([_td(tag), _td(str(n), "num"), *cells])
    return _table(["tag", "items", *[m.name for m in result.models]], rows)


def most_different(result: EvalResult, count: int = SIDE_BY_SIDE) -> list[int]:
    """Items where the models' main-metric scores spread the most (ties: most distinct answers)."""

    def spread(i: int) -> tuple[float, int]:
        values = [getattr(m.scores[i], result.main_metric) or 0.0 for m in result.models]
        distinct = len({m.generations[i].text for m in result.models})
        return (max(values) - min(values), distinct)

    order = sorted(range(len(result.items)), key=spread, reverse=True)
    return sorted(order[:count])


def answers_table(result: EvalResult, indices: list[int]) -> str:
    rows, classes = [], []
    for i in indices:
        item = result.items[i]
        facts = ", ".join(item.must_include) or "-"
        cells = [_td(f"{item.question}\n(line {item.line})"), _td(item.reference), _td(facts)]
        for m in result.models:
            score = getattr(m.scores[i], result.main_metric)
            cls = "" if score is None else ("hit" if score >= 0.999 else "miss")
            cells.append(
                _td(m.generations[i].text or f"({m.generations[i].error or 'empty'})", cls)
            )
        rows.append(cells)
        classes.append("")
    return _table(
        ["question", "reference", "facts", *[m.name for m in result.models]], rows, classes
    )


def verdict_table(result: EvalResult) -> str:
    if not result.verdict:
        return "<p>No criteria were given (see <code>--min-gain</code>, <code>--min</code>, <code>--max-kld</code>).</p>"
    rows = [
        [
            _td(r.model),
            _td(r.criterion),
            _td(r.required),
            _td(r.measured),
            _td(r.shown_status, "SKIP" if r.expected else r.status),
            _td(r.expected),
        ]
        for r in result.verdict
    ]
    overall = "PASS" if result.passed else "FAIL"
    return (
        _table(["model", "criterion", "required", "measured", "result", "why expected"], rows)
        + f'<p>Overall: <span class="{overall}">{overall}</span></p>'
    )


def loss_section(models: list[ModelResult]) -> str:
    parts = [
        img_tag(plots.loss_plot(m.name, m.run_dir), f"loss curve {m.name}")
        for m in models
        if m.run_dir is not None
    ]
    parts = [p for p in parts if p]
    return "<h2>Training loss</h2>" + "".join(parts) if parts else ""


def render_html(result: EvalResult) -> str:
    cfg = result.config
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    differ = most_different(result)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>slm eval report</title><style>{STYLE}</style></head><body>
<h1>Evaluation report</h1>
<p>Eval set <code>{html.escape(str(cfg.data))}</code>: {len(result.items)} questions. Answers at temperature 0, at most {cfg.max_tokens} tokens,
generated by the serving engines ({cfg.concurrency} requests in flight per model). Main metric: <b>{result.main_metric}</b>
with a {cfg.confidence:.0%} bootstrap CI ({cfg.bootstrap_samples} resamples); Δ is paired against <b>{html.escape(result.models[0].name)}</b>.</p>
{f"<ul>{notes}</ul>" if notes else ""}
<h2>Summary</h2>{summary_table(result)}
{img_tag(plots.metric_bars(result), "metric bars")}
<h2>Per tag ({result.main_metric})</h2>{tag_table(result)}
{img_tag(plots.tag_bars(result), "tag bars")}
<h2>Latency</h2>{img_tag(plots.latency_plot(result), "latency distribution")}
{loss_section(result.models)}
<h2>Where the models differ most</h2>{answers_table(result, differ)}
<details><summary>All answers ({len(result.items)})</summary>{answers_table(result, list(range(len(result.items))))}</details>
{retrieval_section(result.retrieval) if result.retrieval else ""}
<h2>Verdict</h2>{verdict_table(result)}
<p style="color:#777;font-size:12px">slmkit {__version__} · report.json beside this file holds every answer and score.</p>
</body></html>
"""
