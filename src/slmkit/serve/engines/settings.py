"""How each engine is started: llama-server children, the in-process transformers engine, vLLM,
and remote OpenAI-compatible endpoints. Part of `slm serve`'s config (`serve/config.py`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from slmkit.config import StrictModel, env_name, http_url


class UpstreamSettings(StrictModel):
    """A remote OpenAI-compatible endpoint served under a local model id."""

    url: str = Field(description="Base URL of the OpenAI-compatible API, e.g. http://host:8000/v1.")
    api_key_env: str | None = Field(
        default=None,
        description="Environment variable holding the endpoint's API key (sent as a Bearer token).",
    )
    model: str | None = Field(
        default=None, description="Model name at the endpoint; default: this entry's id."
    )
    price_in_per_mtok: float = Field(
        default=0.0, ge=0, description="USD per million prompt tokens (for slm_upstream_cost_usd)."
    )
    price_out_per_mtok: float = Field(
        default=0.0, ge=0, description="USD per million completion tokens."
    )
    timeout_s: float = Field(
        default=60.0, gt=0, description="Seconds to connect, and to wait for each streamed chunk."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return http_url(value).rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        return env_name(value, "api_key_env", "BIG_API_KEY")


class LlamaCppSettings(StrictModel):
    """How each `llama-server` child is started."""

    ctx_size: int = Field(
        default=8192, ge=256, description="Total context (`-c`), shared by the parallel slots."
    )
    parallel: int = Field(
        default=8, ge=1, le=256, description="Parallel slots (`-np`): requests decoded together."
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads (`-t`); default: `SLM_THREADS`, else all cores.",
    )
    gpu_layers: int | None = Field(
        default=None, description="Layers offloaded to a GPU (`-ngl`); default: llama-server's."
    )
    extra_args: list[str] = Field(
        default_factory=list, description="More llama-server flags, passed as is."
    )
    start_timeout_s: float = Field(
        default=120.0, gt=0, description="Seconds a child may take to become healthy."
    )
    health_interval_s: float = Field(
        default=0.5, gt=0, description="Seconds between liveness checks of a child."
    )
    max_restarts: int = Field(
        default=20, ge=0, description="Restarts after crashes before the engine stays down."
    )


class TransformersSettings(StrictModel):
    """The in-process transformers engine (unmerged adapters, HF folders)."""

    max_batch_size: int = Field(
        default=8, ge=1, description="Most queued requests generated together in one batch."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Weights dtype; `auto` keeps a bf16/fp16 checkpoint in bf16 where bf16 runs "
        "(half the memory of fp32), loads other checkpoints in fp32, and generates in bf16 on a "
        "CPU where a timed bf16 matmul beats fp32 (about twice the tokens/s there).",
    )
    device: str = Field(
        default="auto", description="`auto` (cuda when available), `cpu` or `cuda`."
    )


class VllmSettings(StrictModel):
    """The optional vLLM engine (CUDA machines with vLLM installed)."""

    extra_args: list[str] = Field(
        default_factory=list, description="More `vllm serve` flags, passed as is."
    )
    start_timeout_s: float = Field(
        default=600.0, gt=0, description="Seconds vLLM may take to become healthy."
    )
