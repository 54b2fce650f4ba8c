"""Sampling settings of `slm chat` and the board's chat (light: imported when the CLI starts)."""

from __future__ import annotations

from pydantic import Field

from slmkit.config import StrictModel


class GenerationSettings(StrictModel):
    """How `slm chat` (and the board's chat) samples an answer."""

    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 = greedy.")
    max_tokens: int = Field(default=256, ge=1, description="Most new tokens per answer.")
    seed: int | None = Field(default=None, description="Sampling seed (reproducible answers).")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
