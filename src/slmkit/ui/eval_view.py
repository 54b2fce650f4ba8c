"""What the Evaluate tab shows: the models it offers, the `slm eval` command line it starts, and the
tables read back from the report.json that command wrote."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.errors import ConfigError
from slmkit.evaluate.config import EvalConfig, build_config, parse_models, parse_thresholds
from slmkit.evaluate.report import DIGITS, SIDE_BY_SIDE, fmt
from slmkit.evaluate.summary import COLUMNS as TERMINAL_COLUMNS
from slmkit.train.run_index import list_runs
from slmkit.ui.charts import typed_frame
from slmkit.ui.export_view import export_folders

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
# the other metrics of the summary: fact recall when it is not the main metric, then the terminal table's
SUMMARY_COLUMNS = (
    ("fact_recall", "facts"),
    *TERMINAL_COLUMNS,
    ("latency_p95_s", "p95 s"),
    ("forbidden_rate", "forbidden"),
)


def _name(text: str) -> str:
    """A model name the `--models NAME=REF` syntax accepts (no commas or `=`)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "model"


def model_choices(runs_dir: Path, exports_dir: Path) -> list[tuple[str, str]]:
    """(label, NAME=REF): the embedded base model, every run folder, every exported GGUF."""
    choices = [("base: default (embedded model)", "base=default")]
    for run in list_runs(runs_dir):
        name = _name(run.name)
        choices.append((f"run: {name} ({run.status})", f"{name}={run.path}"))
    for label, folder in export_folders(exports_dir, runs_dir):
        for gguf in sorted(Path(folder).glob("*.gguf")):
            name = _name(gguf.stem)
            choices.append((f"export: {label}/{gguf.name}", f"{name}={gguf}"))
    return choices


def eval_folders(evals_dir: Path) -> list[tuple[str, str]]:
    """Finished evaluations (folders with a report.json), newest first."""
    found = [p for p in evals_dir.iterdir() if (p / REPORT_JSON).is_file()]
    found.sort(key=lambda p: (p / REPORT_JSON).stat().st_mtime, reverse=True)
    return [(p.name, str(p)) for p in found]


def new_eval_dir(evals_dir: Path, models: list[dict[str, str]]) -> Path:
    """A fresh folder per evaluation: YYYYmmdd-HHMMSS-NAME-vs-NAME."""
    names = "-vs-".join(m["name"] for m in models[:3])
    return evals_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{names}"[:120]


def eval_argv(
    picked: list[str],
    more: str,
    data: str,
    evals_dir: Path,
    *,
    max_tokens: float | None = None,
    limit: float | None = None,
    similarity: bool = True,
    min_gain: str = "",
    min_value: str = "",
) -> list[str]:
    """`eval --models … --data … -o …`, checked first by the CLI's own parsers and EvalConfig."""
    models = parse_models(",".join([*picked, more]))
    if not data.strip():
        raise ConfigError("give an eval set (JSONL: prompt or messages, reference, must_include)")
    data_path = Path(data.strip()).expanduser().resolve()
    criteria = {
        "min_gain": parse_thresholds([min_gain], "--min-gain"),
        "min": parse_thresholds([min_value], "--min"),
    }
    overrides = {
        "models": models,
        "data": str(data_path),
        "max_tokens": int(max_tokens) if max_tokens is not None else None,
        "limit": int(limit) if limit else None,
        "similarity": similarity,
    }
    cfg = build_config(None, overrides, criteria)
    out_dir = new_eval_dir(evals_dir, models)
    spec = ",".join(f"{m.name}={m.ref}" for m in cfg.models)
    argv = ["eval", "--models", spec, "--data", str(cfg.data), "-o", str(out_dir)]
    argv += ["--max-tokens", str(cfg.max_tokens)]
    if cfg.limit:
        argv += ["--limit", str(cfg.limit)]
    argv.append("--similarity" if cfg.similarity else "--no-similarity")
    argv += [f"--min-gain={k}={v}" for k, v in cfg.criteria.min_gain.items()]
    argv += [f"--min={k}={v}" for k, v in cfg.criteria.min.items()]
    return argv


def eval_defaults() -> dict[str, Any]:
    """The form's starting values, from EvalConfig's fields (the single source of defaults)."""
    fields = EvalConfig.model_fields
    return {name: fields[name].default for name in ("max_tokens", "limit", "similarity")}


@dataclass
class EvalReport:
    """One evaluation folder's report.json, shaped into the tab's tables."""

    folder: Path
    data: dict[str, Any]

    @classmethod
    def read(cls, folder: Path) -> EvalReport:
        try:
            return cls(folder, json.loads((folder / REPORT_JSON).read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{folder}: no readable {REPORT_JSON} (did `slm eval` finish?)"
            ) from exc

    @property
    def main_metric(self) -> str:
        return str(self.data["main_metric"])

    @property
    def models(self) -> list[dict[str, Any]]:
        return list(self.data["models"])

    def headline(self) -> str:
        """Markdown: what was compared on what, the overall verdict and the report's notes."""
        level = f"{self.data['settings'].get('confidence', 0.95):.0%}"
        lines = [
            f"**{self.data['n_items']} questions** from `{self.data['data']}`; main metric "
            f"**{self.main_metric}** with a {level} bootstrap CI, Δ paired against "
            f"**{self.models[0]['name']}**."
        ]
        lines += [
            "Models: "
            + "; ".join(f"**{m['name']}** `{m['ref']}` ({m['kind']})" for m in self.models)
        ]
        if self.data.get("verdict"):
            lines.append(f"Overall verdict: **{'PASS' if self.data['passed'] else 'FAIL'}**")
        lines += [f"- note: {note}" for note in self.data.get("notes", [])]
        return "\n\n".join(lines)

    def summary_frame(self) -> Any:
        """One row per model: main metric with CI, Δ vs the first model with CI, then the other
        metrics under the terminal table's short names."""
        level = f"{self.data['settings'].get('confidence', 0.95):.0%}"
        shown = [
            (k, label)
            for k, label in SUMMARY_COLUMNS
            if k != self.main_metric and any(m["metrics"].get(k) is not None for m in self.models)
        ]
        main_col = f"{self.main_metric} ({level} CI)"
        delta_col = f"Δ vs {self.models[0]['name']} ({level} CI)"
        rows = []
        for m in self.models:
            main = m["main"]
            delta = "-"
            if main.get("delta") is not None:
                delta = (
                    f"{main['delta']:+.3f} [{main['delta_low']:+.3f}, {main['delta_high']:+.3f}]"
                )
            row = {
                "model": m["name"],
                "engine": m["engine"],
                main_col: f"{fmt(main.get('mean'))} [{fmt(main.get('low'))}, {fmt(main.get('high'))}]",
                delta_col: delta,
            }
            row.update({label: fmt(m["metrics"].get(k), DIGITS.get(k, 3)) for k, label in shown})
            rows.append(row)
        columns = ["model", "engine", main_col, delta_col, *[label for _, label in shown]]
        return typed_frame(rows, {c: object for c in columns})

    def verdict_frame(self) -> Any:
        columns = ("model", "criterion", "required", "measured", "status")
        return typed_frame(self.data.get("verdict", []), {c: object for c in columns})

    def tag_frame(self) -> Any:
        """Per tag: items and each model's main metric."""
        names = [m["name"] for m in self.models]
        tags = sorted({t for m in self.models for t in m.get("by_tag", {})})
        rows = []
        for tag in tags:
            first = self.models[0]["by_tag"].get(tag, {})
            row: dict[str, Any] = {"tag": tag, "items": str(int(first.get("n") or 0))}
            row.update(
                {
                    m["name"]: fmt(m["by_tag"].get(tag, {}).get(self.main_metric))
                    for m in self.models
                }
            )
            rows.append(row)
        return typed_frame(rows, {c: object for c in ["tag", "items", *names]})

    def differing_items(self, count: int = SIDE_BY_SIDE) -> list[int]:
        """Items where the models' main-metric scores spread most (ties: most distinct answers),
        the same rule as the HTML report's "where the models differ most"."""
        names = [m["name"] for m in self.models]
        items = self.data["items"]

        def spread(i: int) -> tuple[float, int]:
            answers = items[i]["answers"]
            values = [answers[n]["scores"].get(self.main_metric) or 0.0 for n in names]
            return (max(values) - min(values), len({answers[n]["text"] for n in names}))

        return sorted(sorted(range(len(items)), key=spread, reverse=True)[:count])

    def answers_frame(self) -> Any:
        """Side by side: question, reference, facts, each model's answer with its main-metric score."""
        names = [m["name"] for m in self.models]
        rows = []
        for i in self.differing_items():
            item = self.data["items"][i]
            question = next(
                (m["content"] for m in reversed(item["messages"]) if m["role"] == "user"), ""
            )
            row: dict[str, Any] = {
                "question": f"{question} (line {item['line']})",
                "reference": item["reference"],
                "facts": ", ".join(item.get("must_include") or []) or "-",
            }
            for name in names:
                answer = item["answers"][name]
                text = answer["text"] or f"({answer.get('error') or 'empty'})"
                score = answer["scores"].get(self.main_metric)
                row[name] = f"{text}\n[{self.main_metric} {fmt(score, 2)}]"
            rows.append(row)
        return typed_frame(rows, {c: object for c in ["question", "reference", "facts", *names]})

    def answer_widths(self) -> list[str]:
        """Column widths of the answers table: the models' answers share half of it."""
        share = 50 / len(self.models)
        return ["20%", "20%", "10%", *[f"{share:.0f}%" for _ in self.models]]

    def files(self) -> list[Path]:
        return [p for p in (self.folder / REPORT_HTML, self.folder / REPORT_JSON) if p.is_file()]
