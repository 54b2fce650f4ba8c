"""User-facing errors: one line that names the file/line/field and the fix; the CLI exits 2."""

from __future__ import annotations


class SlmError(Exception):
    """An error the user can cause and fix. Its message is printed as one line, no traceback."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} ({hint})")


class ConfigError(SlmError):
    """A recipe or config file is invalid (unknown key, bad value, bad YAML)."""


class DataError(SlmError):
    """A data file is unreadable or its records are invalid."""


class ModelNotFoundError(SlmError):
    """A model reference does not resolve to anything usable."""


class ToolMissingError(SlmError):
    """An external tool (llama.cpp binary, converter script) is missing."""


class DeviceError(SlmError):
    """The requested device or precision is not available on this machine (e.g. QLoRA without CUDA)."""


class ServeError(SlmError):
    """Serving cannot start (port in use, engine failed to start)."""
