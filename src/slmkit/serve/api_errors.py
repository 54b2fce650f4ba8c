"""OpenAI-shaped API errors: `{"error": {"message", "type", "param", "code"}}` with OpenAI's statuses.
The gateway's own (keys, limits, timeouts, sizes), and the engines' errors (`serve/engines/errors.py`,
which name a kind, not a status) as the client sees them (`from_engine`)."""

from __future__ import annotations

import json
from typing import Any

from slmkit.serve.engines import errors as engine_errors
from slmkit.serve.engines.errors import EngineError, ErrorKind


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

    @property
    def retryable(self) -> bool:
        """The answering side's fault (5xx, 429), not the request's: another member may answer."""
        return self.status >= 500 or self.status == 429


# An engine error kind as the client sees it: status, OpenAI error type, default code, Retry-After.
ENGINE_ERRORS: dict[ErrorKind, tuple[int, str, str | None, str | None]] = {
    "bad_request": (400, "invalid_request_error", None, None),
    "context_length": (400, "invalid_request_error", "context_length_exceeded", None),
    "unavailable": (503, "server_error", "engine_unavailable", "2"),
    "failed": (503, "server_error", "engine_error", None),
    "rate_limited": (429, "rate_limit_error", "rate_limit_exceeded", "2"),
    "upstream_error": (502, "server_error", "upstream_error", None),
    "upstream_unavailable": (503, "server_error", "upstream_unavailable", "2"),
    "upstream_timeout": (504, "server_error", "upstream_timeout", None),
}


def from_engine(exc: EngineError) -> ApiError:
    """An engine's error as the API answers it."""
    status, type_, code, retry_after = ENGINE_ERRORS[exc.kind]
    return ApiError(
        status,
        exc.message,
        type_=type_,
        param=exc.param,
        code=exc.code or code,
        headers={"Retry-After": retry_after} if retry_after else None,
    )


def engine_unavailable(model: str, reason: str = "restarting") -> ApiError:
    return from_engine(engine_errors.engine_unavailable(model, reason))


def context_length_exceeded(prompt_tokens: int, n_ctx: int) -> ApiError:
    return from_engine(engine_errors.context_length_exceeded(prompt_tokens, n_ctx))


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def internal_error(exc: BaseException) -> ApiError:
    """An exception as the API shows it: an ApiError as it is, an engine's error in the API's
    terms; anything else is a 500 whose
    message names only the exception's type."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, EngineError):
        return from_engine(exc)
    return ApiError(
        500, f"internal error: {type(exc).__name__}", type_="server_error", code="internal_error"
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


def state_unavailable(exc: BaseException) -> ApiError:
    """503 when the server of the state gateways share (Valkey/Redis) does not answer."""
    return ApiError(
        503,
        f"The shared state server is unavailable ({type(exc).__name__}); try again shortly.",
        type_="server_error",
        code="state_unavailable",
        headers={"Retry-After": "2"},
    )
