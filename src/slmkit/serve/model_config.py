"""Configuration of the served models (`models:` in serve.yaml): an id and what answers it, a local
reference, a remote endpoint, replicas or deployments, an A/B split, an alias that follows the
registry. Part of `ServeConfig` (`serve/config.py`)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from slmkit.config import StrictModel
from slmkit.rag.config import RagSettings
from slmkit.registry.store import VERSION_ID
from slmkit.serve.engines.settings import UpstreamSettings

EngineName = Literal["auto", "llamacpp", "transformers", "vllm", "onnx"]
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")

Strategy = Literal["least-busy", "round-robin", "latency"]


class Deployment(StrictModel):
    """One replica of a model: a local reference or a remote endpoint (exactly one)."""

    ref: str | None = Field(default=None, description="A local model reference (as in `ref`).")
    upstream: UpstreamSettings | None = Field(
        default=None, description="A remote OpenAI-compatible endpoint (as in `upstream`)."
    )
    engine: EngineName = Field(default="auto", description="Engine for a local `ref`.")

    @model_validator(mode="after")
    def _one_source(self) -> Deployment:
        if (self.ref is None) == (self.upstream is None):
            raise ValueError("give either `ref` or `upstream` (exactly one of them)")
        return self


class AbArm(StrictModel):
    """One version in an A/B split: a local model reference and its share of the traffic."""

    ref: str = Field(
        description="Model reference of this version (as in `ref`), e.g. a registry version `@v3` "
        "or alias `@support` (resolved once, at start)."
    )
    weight: float = Field(
        gt=0, description="Share of the traffic, relative to the other arms' weights (> 0)."
    )
    name: str | None = Field(
        default=None,
        description="Version name in the audit log, /metrics and `slm logs ab`; default: the "
        "registry version of an `@v3` or `@alias` reference (`v3`), else the reference itself.",
    )

    @property
    def version(self) -> str:
        """The name this arm's answers carry; an alias arm's is its version, known at start."""
        if self.name is not None:
            return self.name
        return self.ref[1:] if self.ref.startswith("@") else self.ref


class ModelEntry(StrictModel):
    """One served model: the id clients send as `model`, and what answers it: a local reference,
    a remote endpoint, or several replicas behind a load balancer."""

    id: str = Field(description="Model id clients use in requests (letters, digits, . _ : -).")
    ref: str | None = Field(
        default=None,
        description="Model reference: `default`, a .gguf, an export folder, a run folder, an HF folder, "
        "a registry version `@v3`, or an alias `@support` (followed while serving).",
    )
    upstream: UpstreamSettings | None = Field(
        default=None,
        description="Serve a remote OpenAI-compatible endpoint under this id (instead of `ref`).",
    )
    deployments: list[Deployment] | None = Field(
        default=None,
        description="Replicas behind one id: each `{ref: ...}` or `{upstream: {...}}`.",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        description="Copies of the local `ref` (llama.cpp or vLLM) to balance over.",
    )
    strategy: Strategy = Field(
        default="least-busy",
        description="How replicas are picked: least-busy, round-robin, or latency (lowest recent TTFT).",
    )
    cooldown_s: float = Field(
        default=30.0,
        ge=0,
        description="Seconds a replica is left out after `allowed_fails` failures.",
    )
    allowed_fails: int = Field(
        default=3, ge=1, description="Consecutive failures of a replica that cool it down."
    )
    retries: int = Field(
        default=1,
        ge=0,
        description="Other replicas tried when one fails before its first token.",
    )
    engine: EngineName = Field(
        default="auto",
        description="Engine for this model; `auto` = llamacpp for GGUF, onnx for an ONNX export "
        "folder, transformers otherwise.",
    )
    draft_model: str | None = Field(
        default=None,
        description="A small GGUF passed to llama-server as the draft model (speculative decoding).",
    )
    rag: RagSettings | None = Field(
        default=None,
        description="Retrieval: `{index: PATH, top_k, max_tokens}` (or `rag: PATH`); passages of an "
        "`slm index` folder go into a system message and the answer carries their `sources`.",
    )
    reload_s: float = Field(
        default=5.0,
        gt=0,
        description="With `ref: '@ALIAS'` (a registry alias): seconds between registry checks; "
        "when the alias moves, the new version takes over without dropping requests.",
    )

    ab: list[AbArm] | None = Field(
        default=None,
        description="A/B split between versions: `[{ref, weight, name}, ...]` (at least 2 arms); "
        "each answer's version goes to the audit log and /metrics (instead of `ref`).",
    )
    sticky: Literal["user", "none"] = Field(
        default="user",
        description="A/B: `user` sends the same request `user` to the same arm every time "
        "(requests without one are split at random by weight); `none` splits every request.",
    )

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not MODEL_ID.match(value):
            raise ValueError(
                "model id must be 1-64 of letters, digits, . _ : - and start with a letter or digit"
            )
        return value

    @field_validator("ab")
    @classmethod
    def _check_arms(cls, arms: list[AbArm] | None) -> list[AbArm] | None:
        if arms is None:
            return None
        if len(arms) < 2:
            raise ValueError("an A/B split needs at least 2 arms (`{ref, weight}` each)")
        names = [arm.version for arm in arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(
                f"arm names must be unique (got {', '.join(dupes)} twice): give each arm a `name`"
            )
        return arms

    @model_validator(mode="after")
    def _one_source(self) -> ModelEntry:
        given = [
            name
            for name, value in (
                ("ref", self.ref),
                ("upstream", self.upstream),
                ("deployments", self.deployments),
                ("ab", self.ab),
            )
            if value is not None
        ]
        if self.ab is not None and self.replicas > 1:
            given.append("replicas")
        if not given:
            raise ValueError(
                "give `ref`, `upstream`, `deployments` or `ab` (what serves this model)"
            )
        if len(given) > 1:
            raise ValueError(
                f"give only one of `ref`, `upstream`, `deployments`, `ab` (got {' and '.join(given)})"
            )
        if self.deployments is not None and not self.deployments:
            raise ValueError("deployments: list at least one `{ref: ...}` or `{upstream: ...}`")
        if self.follows_alias and self.replicas > 1:
            raise ValueError(
                "a registry alias (`ref: '@NAME'`) is served by one engine: drop `replicas`"
            )
        if self.replicas > 1 and self.ref is None:
            raise ValueError("replicas copies a local `ref`; list remote replicas in `deployments`")
        return self

    @property
    def follows_alias(self) -> bool:
        """`ref: "@support"`: served by an engine that follows the alias (`@v3` is fixed)."""
        ref = (self.ref or "").strip()
        return ref.startswith("@") and not VERSION_ID.match(ref[1:])

    @property
    def pooled(self) -> bool:
        """Served by a load-balanced pool of replicas rather than a single engine."""
        return self.deployments is not None or self.replicas > 1
