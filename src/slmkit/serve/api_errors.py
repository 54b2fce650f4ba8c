"""OpenAI-shaped API errors: `{"error": {"message", "type", "param", "code"}}` with OpenAI's statuses."""

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


def internal_error(exc: BaseException) -> ApiError:
    """An exception as the API shows it: an ApiError as it is; anything else is a 500 whose
    message names only the exception's type."""
    if isinstance(exc, ApiError):
        return exc
    return ApiError(
        500, f"internal error: {type(exc).__name__}", type_="server_error", code="internal_error"
    )


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


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def invalid_api_key() -> ApiError:
    return ApiError(
        401,
        "Incorrect API key provided. Pass it as `Authorization: Bearer KEY`.",
        code="invalid_api_key",
    )


def queue_full(model: str) -> ApiError:
    return ApiError(
        429,
        f"Too many requests in flight for model `{model}`; retry shortly.",
        type_="rate_limit_error",
        code="rate_limit_exceeded",
        headers={"Retry-After": "1"},
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


def request_timeout(seconds: float) -> ApiError:
    return ApiError(
        408,
        f"The request did not finish within {seconds:g} s.",
        type_="timeout_error",
        code="request_timeout",
    )


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body larger than {limit} bytes.", code="request_too_large")


def key_limit_reached(
    key_name: str, limit: str, kind: str, allowed: int, used: int, retry_after_s: int
) -> ApiError:
    """429 in OpenAI's words for a per-key limit (`kind`: `requests` or `tokens`)."""
    return ApiError(
        429,
        f"Rate limit reached for key `{key_name}` on {limit}: Limit {allowed}, Used {used}. "
        f"Please try again in {retry_after_s}s.",
        type_=kind,
        code="rate_limit_exceeded",
        headers={"Retry-After": str(retry_after_s)},
    )
