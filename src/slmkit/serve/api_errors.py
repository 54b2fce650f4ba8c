"""OpenAI-shaped API errors: `{"error": {"message", "type", "param", "code"}}` with OpenAI's statuses.
The gateway's own (keys, limits, timeouts, sizes) and the engines' (`serve/engines/errors.py`)."""

from __future__ import annotations

# the engines' errors, which the gateway answers as they are
from slmkit.serve.engines.errors import UPSTREAM_CODES as UPSTREAM_CODES
from slmkit.serve.engines.errors import ApiError as ApiError
from slmkit.serve.engines.errors import context_length_exceeded as context_length_exceeded
from slmkit.serve.engines.errors import engine_unavailable as engine_unavailable
from slmkit.serve.engines.errors import invalid_request as invalid_request
from slmkit.serve.engines.errors import upstream_failed as upstream_failed


def internal_error(exc: BaseException) -> ApiError:
    """An exception as the API shows it: an ApiError as it is; anything else is a 500 whose
    message names only the exception's type."""
    if isinstance(exc, ApiError):
        return exc
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
