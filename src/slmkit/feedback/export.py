"""`slm feedback export`: rated and escalated answers from the audit log -> SFT / DPO / KTO / eval data.

- thumbs-up answer -> SFT example (the conversation as asked + the answer);
- thumbs-down with a correction -> SFT example of the correction, and a preference pair
  (correction chosen, original answer rejected);
- thumbs-down without a correction -> counted, not exported;
- escalated request answered by another chain member -> SFT example (a stronger model's answer);
- for KTO (`--to kto`) every rated answer is a row of its own, labelled: thumbs-up -> true,
  thumbs-down -> false (with or without a correction), and a correction -> true.

The latest feedback on a request wins; identical (prompt, answer) examples are written once; all
text goes through the gateway's PII filter; the file is validated by the data layer before it is
moved into place.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from slmkit.errors import SlmError
from slmkit.feedback.audit_reader import FeedbackRow, read_rows
from slmkit.serve.config import OutputFilter
from slmkit.serve.guards import StreamingFilter

ExportTarget = Literal["sft", "dpo", "kto", "eval"]
TARGETS: tuple[ExportTarget, ...] = ("sft", "dpo", "kto", "eval")
DATA_FORMAT = {"sft": "messages", "dpo": "preference", "kto": "messages"}
Source = Literal["thumbs-up", "thumbs-down", "correction", "escalated"]
SOURCES: tuple[Source, ...] = ("thumbs-up", "thumbs-down", "correction", "escalated")

# why a request read from the audit log was not exported (the keys of ExportReport.skipped)
NO_FEEDBACK = "no feedback, not escalated"
DOWN_NO_CORRECTION = "thumbs-down without correction"
NO_TEXT = "no prompt/response text"
DUPLICATE = "duplicate (prompt, answer)"
NO_PAIR = "no correction: not a pair"
SAME_AS_ANSWER = "correction equals the answer"
NOT_APPROVED = "escalated: not approved by a person"
NOT_A_QUESTION = "conversation does not end with a user turn"
NOT_RATED = "escalated: not rated"


@dataclass
class Example:
    """What one request contributes: the conversation and the answer to learn (and the one to
    unlearn, for a correction)."""

    request_id: str
    source: Source
    messages: list[dict[str, Any]]
    answer: str
    rejected: str | None = None
    tags: list[str] = field(default_factory=list)
    label: bool | None = None  # KTO: was `answer` good (thumbs-up, correction) or bad


@dataclass
class ExportReport:
    target: ExportTarget
    path: Path | None
    read: int  # answered requests in the window
    rated: int
    sources: Counter[str]  # exported examples by source (SOURCES)
    skipped: Counter[str]  # requests or examples not exported, by reason
    masked: int  # PII spans replaced

    @property
    def exported(self) -> int:
        return sum(self.sources.values())


def export_feedback(
    audit_path: Path | str,
    target: ExportTarget,
    out: Path,
    *,
    since: float | None = None,
    until: float | None = None,
    model: str | None = None,
    output_filter: OutputFilter | None = None,
) -> ExportReport:
    """Write `out` (JSONL) from the audit log; `path` is None when there was nothing to write."""
    if target not in TARGETS:
        raise SlmError(f"--to: {target!r} is not one of {', '.join(TARGETS)}")
    rows = read_rows(audit_path, since, until, model)
    records, report = build_records(rows, target, output_filter)
    if records:
        write_validated(records, target, out)
        report.path = out
    return report


def feedback_eval_rows(
    audit_path: Path | str, since: float | None, model: str | None
) -> list[dict]:
    """Eval-set rows (docs/evaluate.md) whose reference is an approved or corrected answer."""
    records, _ = build_records(read_rows(audit_path, since, None, model), "eval", None)
    return records


def build_records(
    rows: list[FeedbackRow], target: ExportTarget, output_filter: OutputFilter | None
) -> tuple[list[dict[str, Any]], ExportReport]:
    """The output rows for `target`, PII-masked and de-duplicated, and the counts."""
    mask = StreamingFilter(output_filter or OutputFilter(redact_pii=True))
    report = ExportReport(
        target, None, len(rows), sum(1 for r in rows if r.rating), Counter(), Counter(), 0
    )
    examples = (
        rated_examples(rows, report.skipped)
        if target == "kto"
        else examples_from_rows(rows, report.skipped)
    )
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    for example in examples:
        record = to_record(example, target)
        if record is None:
            report.skipped[_skip_reason(example, target)] += 1
            continue
        record = _masked(record, mask)
        key = _dedupe_key(record, target)
        if key in seen:
            report.skipped[DUPLICATE] += 1
            continue
        seen.add(key)
        records.append(record)
        report.sources[example.source] += 1
    report.masked = mask.redactions
    return records, report


def examples_from_rows(rows: list[FeedbackRow], skipped: Counter[str]) -> list[Example]:
    """One example per exportable request; the others counted in `skipped` by reason."""
    examples: list[Example] = []
    wanted = 0
    for row in rows:
        source = _source(row)
        if source is None:
            skipped[DOWN_NO_CORRECTION if row.rating is not None else NO_FEEDBACK] += 1
            continue
        wanted += 1
        messages = row.conversation()
        answer = row.correction if source == "correction" else row.response_text
        if messages is None or answer is None:
            skipped[NO_TEXT] += 1
            continue
        rejected = row.response_text if source == "correction" else None
        examples.append(Example(row.id, source, _plain(messages), answer, rejected, list(row.tags)))
    if wanted and not examples:
        raise SlmError(
            f"the audit log has no prompt/response text for the {wanted} rated or escalated "
            "request(s)",
            hint="set `audit.log_text: true` in serve.yaml (text is stored only then)",
        )
    return examples


def rated_examples(rows: list[FeedbackRow], skipped: Counter[str]) -> list[Example]:
    """KTO: every rated answer labelled by its rating, and a correction as a good answer."""
    examples: list[Example] = []
    for row in rows:
        if row.rating is None:
            skipped[NOT_RATED if row.escalated else NO_FEEDBACK] += 1
            continue
        messages = row.conversation()
        if messages is None or row.response_text is None:
            skipped[NO_TEXT] += 1
            continue
        plain, up = _plain(messages), row.rating > 0
        source: Source = "thumbs-up" if up else "thumbs-down"
        examples.append(Example(row.id, source, plain, row.response_text, label=up))
        if not up and row.correction and row.correction.strip():
            examples.append(Example(row.id, "correction", plain, row.correction, label=True))
    if rows and not examples and any(r.rating is not None for r in rows):
        raise SlmError(
            "the audit log has no prompt/response text for the rated request(s)",
            hint="set `audit.log_text: true` in serve.yaml (text is stored only then)",
        )
    return examples


def _source(row: FeedbackRow) -> Source | None:
    if row.rating is not None and row.rating > 0:
        return "thumbs-up"
    if row.rating is not None:
        return "correction" if row.correction and row.correction.strip() else None
    return "escalated" if row.escalated else None


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with multi-part content flattened to its text (what the data layer reads)."""
    plain = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                str(p.get("text", ""))
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        plain.append({**message, "content": content})
    return plain


def to_record(example: Example, target: ExportTarget) -> dict[str, Any] | None:
    """The example in the target's format; None when it has no place there."""
    answer = {"role": "assistant", "content": example.answer}
    if target == "sft":
        return {"messages": [*example.messages, answer]}
    if target == "kto":
        return {"messages": [*example.messages, answer], "label": example.label}
    if target == "dpo":
        if example.rejected is None or example.rejected.strip() == example.answer.strip():
            return None
        return {"prompt": example.messages, "chosen": example.answer, "rejected": example.rejected}
    if example.source == "escalated" or not example.messages:
        return None  # eval references are answers a person approved or wrote
    if example.messages[-1].get("role") != "user":
        return None
    record: dict[str, Any] = {"messages": example.messages}
    if len(example.messages) == 1:
        record = {"prompt": example.messages[0]["content"]}
    record.update(reference=example.answer, id=example.request_id)
    if example.tags:
        record["tags"] = example.tags
    return record


def _skip_reason(example: Example, target: ExportTarget) -> str:
    if target == "dpo":
        return NO_PAIR if example.rejected is None else SAME_AS_ANSWER
    return NOT_APPROVED if example.source == "escalated" else NOT_A_QUESTION


def _masked(value: Any, mask: StreamingFilter) -> Any:
    """Every string inside `value` through the PII filter (ids and roles contain none)."""
    if isinstance(value, str):
        return mask.filter_all(value)
    if isinstance(value, list):
        return [_masked(v, mask) for v in value]
    if isinstance(value, dict):
        return {k: v if k in ("id", "role") else _masked(v, mask) for k, v in value.items()}
    return value


def _dedupe_key(record: dict[str, Any], target: ExportTarget) -> str:
    if target == "eval":
        same = {k: record.get(k) for k in ("prompt", "messages", "reference")}
    elif target == "dpo":
        same = {k: record[k] for k in ("prompt", "chosen")}
    else:
        same = record
    return json.dumps(same, sort_keys=True, ensure_ascii=False)


def write_validated(records: list[dict[str, Any]], target: ExportTarget, out: Path) -> None:
    """Write JSONL next to `out`, load it back with the data layer, then move it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    try:
        _validate(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)


def _validate(path: Path, target: ExportTarget) -> None:
    if target == "eval":
        from slmkit.evaluate.evalset import load_eval_set

        load_eval_set(path)
        return
    from slmkit.data.loader import load_records

    load_records([path], DATA_FORMAT[target]).raise_for_errors()
