"""Errors on the page are the CLI's one-line text, never a traceback."""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from slmkit.config import format_validation_error
from slmkit.errors import SlmError

log = logging.getLogger("slmkit.ui")
F = TypeVar("F", bound=Callable[..., Any])


def error_line(exc: BaseException) -> str:
    """`error: …` as `slm` prints it (an unexpected exception: `internal error: Type: message`)."""
    if isinstance(exc, SlmError):
        return f"error: {exc}"
    if isinstance(exc, ValidationError):
        return f"error: {format_validation_error(exc)}"
    log.exception("board handler failed")
    return f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]


def status_html(text: str, kind: str = "info") -> str:
    """A one-line status for a tab's status box (`kind`: info, ok, error)."""
    return f'<div class="slm-status slm-{kind}">{html.escape(text)}</div>'


def error_html(exc: BaseException) -> str:
    return status_html(error_line(exc), "error")


def reports_errors(outputs: int) -> Callable[[F], F]:
    """Wrap a handler whose FIRST output is the tab's status box: an exception becomes its one-line
    error there and every other output is left as it was."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def handler(*args: Any, **kwargs: Any) -> Any:
            import gradio as gr

            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if outputs == 1:
                    return error_html(exc)
                return (error_html(exc), *[gr.skip() for _ in range(outputs - 1)])

        return handler  # type: ignore[return-value]

    return wrap
