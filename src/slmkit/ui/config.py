"""Settings of `slm ui`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

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
    )

    @model_validator(mode="after")
    def _exposed_needs_auth(self) -> BoardConfig:
        if self.auth is not None and (":" not in self.auth or self.auth.startswith(":")):
            raise ValueError("auth must be user:password")
        if self.host not in LOOPBACK and not self.auth:
            raise ValueError(
                f"binding {self.host} exposes the board to the network: give --auth user:password "
                "(or set SLM_UI_AUTH)"
            )
        return self

    def credentials(self) -> tuple[str, str] | None:
        if not self.auth:
            return None
        user, password = self.auth.split(":", 1)
        return user, password
