"""`DistillSettings`: the teacher, the prompts and the filters of `slm distill` and of a recipe's
`distill:` section (defaults live only here)."""

from __future__ import annotations

from pydantic import Field, model_validator

from slmkit.config import StrictModel

DEFAULT_REFUSALS = [
    "I can't help",
    "I cannot help",
    "I can't assist",
    "I cannot assist",
    "I'm sorry, but I",
    "As an AI",
]

# Settings that change how fast the answers come, never which answers are kept: a change to them
# does not redo a finished distillation in `slm run`.
SPEED_ONLY = {"concurrency", "retries", "timeout_s"}


class DistillSettings(StrictModel):
    """A teacher's answers to a prompt set, filtered, as SFT data."""

    teacher: str | None = Field(
        default=None,
        description="Teacher: an OpenAI-compatible base URL (http(s)://HOST/v1) or a model "
        "reference (default, a .gguf, an export or run folder) served in-process. In a recipe: "
        "none = no distill stage.",
    )
    teacher_model: str | None = Field(
        default=None,
        description="Model name to ask at the teacher URL; default: the only (or first) model "
        "it lists.",
    )
    api_key_env: str | None = Field(
        default=None,
        description="Environment variable holding the teacher URL's API key (sent as a Bearer "
        "token, never printed).",
    )
    prompts: str | None = Field(
        default=None,
        description="Prompts: JSONL with `prompt` or `messages`, optional `must_include` and "
        "`id` (an eval set works), or .txt with one prompt per line.",
    )
    system: str | None = Field(
        default=None,
        description="System prompt sent to the teacher only (not written to the data), for "
        "prompts without one of their own.",
    )
    max_tokens: int = Field(default=512, ge=1, description="Most tokens in a teacher answer.")
    temperature: float = Field(default=0.0, ge=0, le=2, description="Teacher sampling temperature.")
    concurrency: int = Field(
        default=4, ge=1, le=256, description="Requests to the teacher in flight at once."
    )
    retries: int = Field(
        default=3,
        ge=0,
        le=20,
        description="Retries of a request after a 429, a 5xx, a timeout or a lost connection, "
        "with exponential backoff.",
    )
    timeout_s: float = Field(
        default=120.0, gt=0, description="Seconds one teacher request may take."
    )
    max_answer_chars: int | None = Field(
        default=None,
        ge=1,
        description="Reject answers longer than this many characters (too_long); none = no limit.",
    )
    keep_truncated: bool = Field(
        default=False,
        description="Keep answers cut off by max_tokens (finish_reason length); by default "
        "they are rejected (truncated).",
    )
    refusal: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSALS),
        description="Reject answers containing one of these phrases (case-insensitive).",
    )
    repetition: bool = Field(
        default=True,
        description="Reject answers that fell into a loop (the serve repetition guard's check).",
    )

    @model_validator(mode="after")
    def _teacher_and_prompts(self) -> DistillSettings:
        if (self.teacher is None) != (self.prompts is None):
            missing = "prompts" if self.prompts is None else "teacher"
            raise ValueError(f"{missing}: required when distilling (give teacher and prompts)")
        return self

    @property
    def enabled(self) -> bool:
        return self.teacher is not None
