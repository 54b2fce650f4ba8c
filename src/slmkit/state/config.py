"""`state:` in serve.yaml: where the gateway keeps what several gateways must share.

No `database` means the SQLite files under `$SLM_HOME` as before; a `postgresql://` URL puts the
audit log, feedback and the registry the gateway's aliases follow in PostgreSQL. `cache` (a
`redis://` / `valkey://` URL) puts the per-key limits' windows and the response cache in
Valkey/Redis.
Secrets go in environment variables named by the `*_env` fields, never in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from slmkit.config import StrictModel, env_name, env_secret
from slmkit.errors import ConfigError

DATABASE_SCHEMES = ("postgresql", "postgres")
CACHE_SCHEMES = ("redis", "rediss", "valkey", "valkeys")


def is_database_url(value: str | Path) -> bool:
    """A `postgresql://` / `postgres://` URL (a path or any other text is not one)."""
    return isinstance(value, str) and urlsplit(value).scheme.lower() in DATABASE_SCHEMES


def as_target(value: Any) -> Any:
    """A database as the user wrote it: a URL stays text, anything else is a file path."""
    if isinstance(value, str) and not is_database_url(value):
        return Path(value)
    return value


# a database a command reads or writes: a SQLite file or a PostgreSQL URL
DatabaseTarget = Annotated[Path | str, BeforeValidator(as_target)]


def url_problem(value: str, schemes: tuple[str, ...]) -> str | None:
    """Why `value` is not a usable URL of one of `schemes` (never repeats a password)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    names = " or ".join(f"{s}://" for s in schemes)
    if parts.scheme.lower() not in schemes:
        got = f"{parts.scheme}://" if parts.scheme else "no scheme"
        return f"must be a {names} URL (got {got})"
    return None


def display_url(url: str) -> str:
    """A URL as it may be printed: scheme, host:port and path, the password left out."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


class StateSettings(StrictModel):
    """Where shared state lives: none set = SQLite files and memory on this machine."""

    database: str | None = Field(
        default=None,
        description="PostgreSQL URL (postgresql://user@host:5432/db) for the audit log and "
        "feedback, shared by several gateways; none = the SQLite file of `audit.path`.",
    )
    database_env: str | None = Field(
        default=None,
        description="Name of the environment variable that holds the PostgreSQL URL (with its "
        "password); instead of `database`.",
    )
    cache: str | None = Field(
        default=None,
        description="Valkey/Redis URL (redis://host:6379/0 or valkey://...) for the per-key "
        "request and token windows and the response cache, shared by several gateways; none = "
        "in-process memory.",
    )
    cache_env: str | None = Field(
        default=None,
        description="Name of the environment variable that holds the Valkey/Redis URL; instead "
        "of `cache`.",
    )

    @field_validator("database")
    @classmethod
    def _check_database(cls, value: str | None) -> str | None:
        problem = url_problem(value, DATABASE_SCHEMES) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("cache")
    @classmethod
    def _check_cache(cls, value: str | None) -> str | None:
        problem = url_problem(value, CACHE_SCHEMES) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("database_env", "cache_env")
    @classmethod
    def _check_env_names(cls, value: str | None, info: ValidationInfo) -> str | None:
        field = info.field_name or "database_env"
        example = "SLM_DATABASE_URL" if field == "database_env" else "SLM_CACHE_URL"
        return env_name(value, field, example)

    @model_validator(mode="after")
    def _one_source_each(self) -> StateSettings:
        for field in ("database", "cache"):
            if getattr(self, field) is not None and getattr(self, f"{field}_env") is not None:
                raise ValueError(f"give either `{field}` or `{field}_env`, not both")
        return self

    def database_url(self) -> str | None:
        """The PostgreSQL URL (read from `database_env` when that is set); None: SQLite."""
        return self._url("database", DATABASE_SCHEMES)

    def cache_url(self) -> str | None:
        """The Valkey/Redis URL (read from `cache_env` when that is set); None: in memory."""
        return self._url("cache", CACHE_SCHEMES)

    def _url(self, field: str, schemes: tuple[str, ...]) -> str | None:
        env = getattr(self, f"{field}_env")
        url = getattr(self, field) or env_secret(env, f"state.{field}_env")
        problem = url_problem(url, schemes) if url is not None else None
        if problem:
            raise ConfigError(f"state.{field}_env: {env}: {problem}")
        return url if url is None else str(url)
