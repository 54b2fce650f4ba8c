"""The teacher: an OpenAI-compatible endpoint asked over HTTP, either a remote URL or our own
gateway built in-process for a model reference (the same engines as `slm serve`, reached through
an ASGI transport instead of a port). Retries with exponential backoff on 429/5xx/timeouts."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from slmkit.config import env_secret
from slmkit.distill.config import DistillSettings
from slmkit.errors import ConfigError, SlmError

BACKOFF_S = 0.5  # first wait before a retry; doubled each time
MAX_WAIT_S = 30.0
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class TeacherError(SlmError):
    """The teacher cannot be reached or refuses us (checked once, before any prompt is sent)."""


@dataclass
class TeacherAnswer:
    text: str
    finish_reason: str | None


class NoAnswer(Exception):
    """A request that got no answer after its retries; the prompt is tried again on a re-run."""


def is_url(teacher: str) -> bool:
    """Whether `--teacher` names an endpoint (http/https) rather than a model reference."""
    match = _SCHEME.match(teacher)
    if match is None:
        return False
    if match.group(1).lower() not in ("http", "https"):
        raise ConfigError(
            f"--teacher {teacher}: unsupported URL scheme {match.group(1)!r} "
            "(expected http(s)://HOST/v1 or a model reference such as default or a .gguf)"
        )
    return True


def check_teacher(settings: DistillSettings) -> None:
    """The teacher's URL scheme and key variable, checked before any prompt is read."""
    assert settings.teacher is not None
    if is_url(settings.teacher):
        api_key(settings)


def api_key(settings: DistillSettings) -> str | None:
    return env_secret(settings.api_key_env, "--api-key-env")


class Teacher:
    """Asks one model of an OpenAI-compatible API for chat answers."""

    def __init__(
        self, client: httpx.AsyncClient, model: str, settings: DistillSettings, shown: str
    ) -> None:
        self.client = client
        self.model = model
        self.settings = settings
        self.shown = shown  # how the teacher is named in messages (no key, no password)

    async def ask(self, messages: list[dict[str, str]]) -> TeacherAnswer:
        """The answer, retrying 429, 5xx, timeouts and lost connections; NoAnswer when it gives up."""
        payload = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.settings.max_tokens,
            "temperature": self.settings.temperature,
        }
        problem = ""
        for attempt in range(self.settings.retries + 1):
            wait = min(MAX_WAIT_S, BACKOFF_S * 2**attempt)
            try:
                response = await self.client.post("/chat/completions", json=payload)
            except httpx.TimeoutException:
                problem = f"timed out after {self.settings.timeout_s:g}s"
            except httpx.TransportError as exc:
                problem = f"connection failed ({type(exc).__name__})"
            else:
                if response.status_code == 200:
                    return _answer(response)
                problem = f"HTTP {response.status_code}: {_error_message(response)}"
                if response.status_code != 429 and response.status_code < 500:
                    raise NoAnswer(problem)  # the request itself is wrong: retrying will not help
                wait = max(wait, _retry_after(response))
            if attempt < self.settings.retries:
                await asyncio.sleep(wait)
        raise NoAnswer(f"{problem} ({self.settings.retries} retries)")


def _answer(response: httpx.Response) -> TeacherAnswer:
    try:
        choice = response.json()["choices"][0]
        text = choice["message"].get("content") or ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise NoAnswer(f"not an OpenAI chat completion ({type(exc).__name__})") from exc
    return TeacherAnswer(str(text), choice.get("finish_reason"))


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return response.text[:200].strip() or response.reason_phrase


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(MAX_WAIT_S, float(response.headers.get("Retry-After", 0)))
    except ValueError:
        return 0.0


@asynccontextmanager
async def open_teacher(settings: DistillSettings) -> AsyncIterator[Teacher]:
    """The teacher of `settings`, checked (`/models` answers and lists the model) and ready."""
    assert settings.teacher is not None
    timeout = httpx.Timeout(settings.timeout_s, connect=min(10.0, settings.timeout_s))
    if is_url(settings.teacher):
        key = api_key(settings)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        shown = re.sub(r"//[^/@]*@", "//", settings.teacher)
        async with httpx.AsyncClient(
            base_url=settings.teacher.rstrip("/"), headers=headers, timeout=timeout
        ) as client:
            model = await _pick_model(client, settings.teacher_model, shown)
            yield Teacher(client, model, settings, shown)
        return
    async with _served(settings) as (app, model_id):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://teacher/v1", timeout=timeout
        ) as client:
            yield Teacher(client, model_id, settings, settings.teacher)


async def _pick_model(client: httpx.AsyncClient, wanted: str | None, shown: str) -> str:
    try:
        response = await client.get("/models")
    except httpx.HTTPError as exc:
        raise TeacherError(
            f"--teacher {shown}: cannot reach it ({type(exc).__name__}: {exc})"
        ) from exc
    if response.status_code in (401, 403):
        raise TeacherError(
            f"--teacher {shown}: the key was refused (HTTP {response.status_code})",
            hint="set --api-key-env to the variable that holds the key",
        )
    if response.status_code != 200:
        raise TeacherError(
            f"--teacher {shown}: GET /models answered HTTP {response.status_code}: "
            f"{_error_message(response)} (expected an OpenAI-compatible base URL ending in /v1)"
        )
    try:
        ids = [str(m["id"]) for m in response.json()["data"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise TeacherError(
            f"--teacher {shown}: GET /models is not an OpenAI model list "
            "(expected an OpenAI-compatible base URL ending in /v1)"
        ) from exc
    if wanted is not None:
        return wanted  # an API may serve models it does not list
    if not ids:
        raise TeacherError(f"--teacher {shown}: lists no models; name one with --teacher-model")
    return ids[0]


@asynccontextmanager
async def _served(settings: DistillSettings) -> AsyncIterator[tuple[Any, str]]:
    """Our own gateway for a model reference, started in-process (llama-server child for a GGUF,
    transformers for an adapter run), without a port, an audit log or alert rules."""
    from slmkit.serve.app import create_app
    from slmkit.serve.config import AuditSettings, Limits, ServeConfig
    from slmkit.serve.engines.settings import LlamaCppSettings
    from slmkit.serve.gateway import Gateway
    from slmkit.serve.server import build_engines, model_entry

    assert settings.teacher is not None
    entry = model_entry(settings.teacher)
    config = ServeConfig(
        models=[entry],
        audit=AuditSettings(enabled=False),
        alerts=[],
        limits=Limits(
            max_tokens_cap=max(settings.max_tokens, 1),
            request_timeout_s=settings.timeout_s,
            max_queue=max(64, settings.concurrency * 2),
        ),
        # one slot per request in flight, each with room for a prompt and a whole answer
        llamacpp=LlamaCppSettings(
            parallel=settings.concurrency,
            ctx_size=max(8192, settings.concurrency * (settings.max_tokens + 1024)),
        ),
    )
    gateway = Gateway(config, build_engines(config))
    await gateway.start()
    try:
        yield create_app(gateway, manage_engines=False), entry.id
    finally:
        await gateway.stop()
