"""The errors an engine raises: a kind (what went wrong, in the engine's terms) and a message.

An engine knows nothing of HTTP: the gateway turns each kind into the status, OpenAI error type
and code its client sees (`serve/api_errors.py` `from_engine`). What the kind says is whether
the request was at fault (`bad_request`, `context_length`: asking again elsewhere gives the same
answer) or the engine was (`retryable`: another replica or member may answer).
"""

from __future__ import annotations

from typing import Literal, get_args

ErrorKind = Literal[
    "bad_request",  # the request cannot be answered as sent (schema, template, the engine said so)
    "context_length",  # the prompt does not fit the engine's context window
    "unavailable",  # the engine is starting, restarting, stopped or unreachable
    "failed",  # generation broke part-way
    "rate_limited",  # a remote endpoint is rate limiting the gateway
    "upstream_error",  # a remote endpoint gave a bad answer, refused our credentials, or broke
    "upstream_unavailable",  # a remote endpoint said it is overloaded or down
    "upstream_timeout",  # a remote endpoint did not answer in time
]
KINDS: tuple[ErrorKind, ...] = get_args(ErrorKind)
CLIENT_FAULTS: frozenset[ErrorKind] = frozenset({"bad_request", "context_length"})


class EngineError(Exception):
    """What an engine raises before (or instead of) its first delta, or part-way through."""

    def __init__(
        self, kind: ErrorKind, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown engine error kind {kind!r}; one of {', '.join(KINDS)}")
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.param = param  # the request field at fault, for `bad_request`
        self.code = code  # a more precise machine-readable reason than the kind

    @property
    def retryable(self) -> bool:
        """The engine's fault (down, overloaded, broken answer), not the request's: another
        replica or route member may answer."""
        return self.kind not in CLIENT_FAULTS

    def with_message(self, message: str) -> EngineError:
        return EngineError(self.kind, message, param=self.param, code=self.code)

    def __repr__(self) -> str:
        return f"EngineError({self.kind!r}, {self.message!r})"


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> EngineError:
    return EngineError("bad_request", message, param=param, code=code)


def context_length_exceeded(prompt_tokens: int, n_ctx: int) -> EngineError:
    return EngineError(
        "context_length",
        f"This model's maximum context length is {n_ctx} tokens. However, your messages "
        f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
        param="messages",
        code="context_length_exceeded",
    )


def engine_unavailable(model: str, reason: str = "restarting") -> EngineError:
    return EngineError(
        "unavailable", f"The engine serving `{model}` is unavailable ({reason}); retry shortly."
    )


def engine_failed(message: str) -> EngineError:
    return EngineError("failed", message, code="engine_error")


UpstreamKind = Literal["upstream_error", "upstream_unavailable", "upstream_timeout"]


def upstream_failed(model: str, reason: str, kind: UpstreamKind = "upstream_error") -> EngineError:
    """A remote endpoint behind `model` failed: a bad answer or unreachable (`upstream_error`),
    overloaded (`upstream_unavailable`) or timed out (`upstream_timeout`)."""
    return EngineError(kind, f"The upstream serving `{model}` failed ({reason}); retry shortly.")


def upstream_rate_limited(model: str) -> EngineError:
    return EngineError(
        "rate_limited", f"The upstream serving `{model}` is rate limiting; retry shortly."
    )
