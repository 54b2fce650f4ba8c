"""Settings of `slm ui`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from slmkit.config import StrictModel

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class BoardConfig(StrictModel):
    host: str = Field(
        default="127.0.0.1",
        description="Address to bind; anything but loopback needs --auth.",
    )
    port: int = Field(default=7860, ge=1, le=65535, description="Port of the board.")
    runs: Path = Field(
        default=Path("runs"),
        description="Folder of run folders (CLI, `slm run` and board runs all show).",
    )
    auth: str | None = Field(
        default=None,
        description="user:password for the login page (or set SLM_UI_AUTH).",
        validate_default=True,
    )

    @field_validator("auth")
    @classmethod
    def _exposed_needs_auth(cls, auth: str | None, info: ValidationInfo) -> str | None:
        if auth is not None and (":" not in auth or auth.startswith(":")):
            raise ValueError("expected user:password")
        host = info.data.get("host", "127.0.0.1")
        if host not in LOOPBACK and not auth:
            raise ValueError(
                f"binding {host} exposes the board to the network: give --auth user:password "
                "(or set SLM_UI_AUTH)"
            )
        return auth

    def credentials(self) -> tuple[str, str] | None:
        if not self.auth:
            return None
        user, password = self.auth.split(":", 1)
        return user, password
