"""Request bodies of the OpenAI endpoints (strict types, unknown fields passed through) and
the engine-independent generation request built from them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from slmkit.serve.engines.request import GenerationRequest, ReasoningMode

Role = Literal["system", "user", "assistant", "tool", "developer", "function"]


class _OpenAIBody(BaseModel):
    # Strict: "1" is not an int and 1 is not a bool, as with OpenAI. Unknown fields pass through.
    model_config = ConfigDict(strict=True, extra="allow", protected_namespaces=())


class ChatMessage(_OpenAIBody):
    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message text (text parts of a multi-part content joined)."""
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class StreamOptions(_OpenAIBody):
    include_usage: bool = False


class ToolFunction(_OpenAIBody):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDefinition(_OpenAIBody):
    """One entry of `tools`: checked here, so a malformed one is a 400 before any engine work."""

    type: Literal["function"]
    function: ToolFunction


class _SamplingFields(_OpenAIBody):
    model: str = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="Only n=1 is supported.")
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    user: str | None = None
    metadata: dict[str, str] | None = None  # tags a route's rules can match

    @model_validator(mode="after")
    def _check_stop(self) -> _SamplingFields:
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop: at most 4 sequences")
        return self


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: dict[str, Any] | None = None
    tools: list[ToolDefinition] | None = Field(None, min_length=1, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    context_policy: Literal["reject", "prune", "summarize"] | None = Field(
        None, description="slmkit extension: what to do when the prompt is longer than the context."
    )
    include_reasoning: bool | None = Field(
        None,
        description="false: leave a reasoning model's thinking out of the answer (default: the "
        "server's `reasoning:` setting).",
    )

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_names_a_tool(cls, choice: Any, info: ValidationInfo) -> Any:
        if choice is None or choice == "none":
            return choice
        if isinstance(choice, str) and choice not in ("auto", "required"):
            raise ValueError("expected 'none', 'auto', 'required' or a named function")
        tools: list[ToolDefinition] | None = info.data.get("tools")
        if not tools:
            raise ValueError("only allowed when tools are given")
        if isinstance(choice, dict):
            function = choice.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if choice.get("type") != "function" or name not in {t.function.name for t in tools}:
                raise ValueError("expected {'type': 'function', 'function': {'name': <a tool>}}")
        return choice


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] = Field(min_length=1)
    echo: bool = False

    @model_validator(mode="after")
    def _single_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("prompt: exactly one prompt per request is supported")
        return self


class EmbeddingRequest(_OpenAIBody):
    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] = Field(min_length=1)
    # the openai client asks for base64 unless told otherwise (and decodes it itself)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    @field_validator("input")
    @classmethod
    def _no_empty_text(cls, value: str | list[str]) -> str | list[str]:
        # OpenAI refuses an empty string inside a list too; an empty text has no meaning to embed
        if isinstance(value, list) and any(not text for text in value):
            raise ValueError(f"input[{[bool(t) for t in value].index(False)}]: empty string")
        return value


class FeedbackRequest(_OpenAIBody):
    id: str = Field(min_length=1, max_length=128, description="The completion id (`chatcmpl-...`).")
    rating: Literal[-1, 1] = Field(description="+1 good, -1 bad.")
    correction: str | None = Field(
        None, max_length=100_000, description="What the answer should have been."
    )
    tags: list[str] | None = Field(
        None,
        max_length=8,
        description="Why the answer was good or bad (at most 8 tags of 1-32 characters).",
    )

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, value: list[str] | None) -> list[str] | None:
        for tag in value or []:
            if not 1 <= len(tag) <= 32:
                raise ValueError(f"tag {tag[:40]!r}: expected 1 to 32 characters")
        return value


PASSTHROUGH_FIELDS = (
    "response_format",
    "tools",
    "tool_choice",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "parallel_tool_calls",
    "top_k",
    "min_p",
    "grammar",
    "json_schema",
)


def generation_request(
    body: ChatCompletionRequest | CompletionRequest,
    model_id: str,
    max_tokens: int,
    reasoning: ReasoningMode = "separate",
) -> GenerationRequest:
    """Engine request from a validated body (max_tokens already capped); `reasoning` is the
    server's setting, which a chat request can turn to `hide` (plain completions stay raw)."""
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    dumped = body.model_dump(exclude_unset=True)
    passthrough = {k: dumped[k] for k in PASSTHROUGH_FIELDS if dumped.get(k) is not None}
    messages = prompt = None
    if isinstance(body, ChatCompletionRequest):
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        if body.include_reasoning is False:
            reasoning = "hide"
    else:
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        reasoning = "raw"
    return GenerationRequest(
        model_id=model_id,
        messages=messages,
        prompt=prompt,
        max_tokens=max_tokens,
        stream=body.stream,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=stop,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        passthrough=passthrough,
        user=body.user,
        reasoning=reasoning,
    )
