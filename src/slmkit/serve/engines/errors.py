"""The errors an engine raises: OpenAI-shaped (`{"error": {"message", "type", "param", "code"}}`
with OpenAI's statuses), so that an OpenAI-compatible child's refusal passes through unchanged.
The gateway's own errors (keys, limits, timeouts) are in `serve/api_errors.py`."""

from __future__ import annotations

import json
from typing import Any


class ApiError(Exception):
    """An error answered to the client; raised anywhere before the response headers are sent."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def context_length_exceeded(prompt_tokens: int, n_ctx: int) -> ApiError:
    return ApiError(
        400,
        f"This model's maximum context length is {n_ctx} tokens. However, your messages "
        f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
        param="messages",
        code="context_length_exceeded",
    )


def engine_unavailable(model: str, reason: str = "restarting") -> ApiError:
    return ApiError(
        503,
        f"The engine serving `{model}` is unavailable ({reason}); retry shortly.",
        type_="server_error",
        code="engine_unavailable",
        headers={"Retry-After": "2"},
    )


UPSTREAM_CODES = {502: "upstream_error", 503: "upstream_unavailable", 504: "upstream_timeout"}


def upstream_failed(model: str, reason: str, status: int = 502) -> ApiError:
    """A remote endpoint behind `model` failed: 502 bad answer or unreachable, 503 overloaded,
    504 timed out."""
    return ApiError(
        status,
        f"The upstream serving `{model}` failed ({reason}); retry shortly.",
        type_="server_error",
        code=UPSTREAM_CODES[status],
        headers={"Retry-After": "2"} if status == 503 else None,
    )
