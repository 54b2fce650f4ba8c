"""Preference pairs for TRL's DPOTrainer (conversational format)."""

from __future__ import annotations

from typing import Any

from slmkit.data.records import Record
from slmkit.errors import DataError


def to_preference_rows(records: list[Record]) -> list[dict[str, Any]]:
    """`{"prompt": [messages], "chosen": [assistant msg], "rejected": [assistant msg]}` per preference record."""
    rows = []
    for record in records:
        if record.kind != "preference" or record.rejected is None:
            raise DataError(
                f"{record.source}: not a preference pair (expected prompt/chosen/rejected fields)",
                hint="DPO needs preference data; SFT data trains with `slm train sft`",
            )
        prompt = record.prompt_messages()
        rows.append(
            {
                "prompt": prompt,
                "chosen": record.messages[len(prompt) :],
                "rejected": record.rejected[len(prompt) :],
            }
        )
    return rows
