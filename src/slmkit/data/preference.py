"""Preference pairs for TRL's DPOTrainer, tokenized the way SFT samples are.

TRL would render conversational pairs itself with the tokenizer's template and take the answer as
what follows the prompt, which fails for templates that rewrite the last turn (R1 drops the
reasoning of every assistant turn it renders) and ignores a recipe's `data.template`. So the rows
are given to TRL already tokenized: the prompt as inference renders it, each answer as the model
writes it after that prompt (`data.template.reply_ids`).
"""

from __future__ import annotations

from typing import Any

from slmkit.data.records import Record
from slmkit.errors import DataError


def to_preference_rows(records: list[Record], renderer: Any) -> list[dict[str, list[int]]]:
    """`{"prompt_ids", "chosen_ids", "rejected_ids"}` per preference record."""
    from slmkit.data.template import reply_ids

    rows = []
    for record in records:
        if record.kind != "preference" or record.rejected is None:
            raise DataError(
                f"{record.source}: not a preference pair (expected prompt/chosen/rejected fields)",
                hint="DPO needs preference data; SFT data trains with `slm train sft`",
            )
        prompt_ids, chosen_ids = reply_ids(record.messages, record.tools, renderer)
        _, rejected_ids = reply_ids(record.rejected, record.tools, renderer)
        rows.append(
            {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}
        )
    return rows


def to_unpaired_rows(records: list[Record], renderer: Any) -> list[dict[str, Any]]:
    """`{"prompt_ids", "completion_ids", "label"}` per rated answer (KTO)."""
    from slmkit.data.template import reply_ids

    rows: list[dict[str, Any]] = []
    for record in records:
        if record.kind != "unpaired" or record.label is None:
            raise DataError(
                f"{record.source}: not a rated answer (expected a conversation with label: true|false)",
                hint="KTO learns from rated answers; `slm feedback export --to kto` writes them",
            )
        prompt_ids, completion_ids = reply_ids(record.messages, record.tools, renderer)
        rows.append(
            {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "label": record.label}
        )
    return rows
