"""The FastAPI app: OpenAI endpoints, auth and body-size middleware, OpenAI-shaped errors.

Every error is decided before a response header is sent; the generation flow itself lives in
`gateway.py`, the OpenAI response format in `openai_wire.py`.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmkit.config import env_secret
from slmkit.serve import api_errors
from slmkit.serve.api_errors import ApiError, body_too_large, invalid_api_key, invalid_request
from slmkit.serve.audit import key_id
from slmkit.serve.gateway import Gateway
from slmkit.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    FeedbackRequest,
)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
# Orchestrators' probes send no key: /live (the process serves HTTP), /ready (every engine is
# ready), /health (the engines' report, 200 when ready). /metrics also opens to the scrape token.
OPEN_PATHS = frozenset({"/health", "/live", "/ready"})
METRICS_PATH = "/metrics"


class _BodyTooLarge(Exception):
    pass


class AuthAndLimitsMiddleware:
    """Pure ASGI (no per-chunk overhead on streams): API key check and request body size limit.

    `api_keys` maps each accepted key to its name, which is all the rest of the gateway sees;
    `metrics_token` opens `/metrics` only (a scrape credential that cannot generate)."""

    def __init__(
        self,
        app: Any,
        api_keys: dict[str, str],
        max_body_bytes: int,
        metrics_token: str | None = None,
    ) -> None:
        self.app = app
        self.keys = [(k.encode(), name) for k, name in api_keys.items()]
        self.max_body = max_body_bytes
        self.metrics_token = metrics_token.encode() if metrics_token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        presented = _bearer(headers.get(b"authorization", b""))
        name = self._key_name(presented)
        if self.keys and not self._admitted(scope["path"], name, presented):
            await _send_error(send, invalid_api_key())
            return
        state = scope.setdefault("state", {})
        state["key_id"] = name or (
            key_id(presented.decode(errors="replace")) if presented else None
        )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _send_error(send, body_too_large(self.max_body))
            return
        await self._call_limited(scope, receive, send)

    def _key_name(self, presented: bytes) -> str | None:
        """The name of the presented key; None when it is not one of ours."""
        found = None
        for key, name in self.keys:  # compare against every key: time does not depend on which
            if hmac.compare_digest(presented, key):
                found = name
        return found

    def _admitted(self, path: str, name: str | None, presented: bytes) -> bool:
        """An open path, one of our keys, or the scrape token on /metrics."""
        if path in OPEN_PATHS or name is not None:
            return True
        if self.metrics_token is None or path != METRICS_PATH:
            return False
        return hmac.compare_digest(presented, self.metrics_token)

    async def _call_limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise _BodyTooLarge
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_error(send, body_too_large(self.max_body))


def _bearer(value: bytes) -> bytes:
    scheme, _, token = value.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


async def _send_error(send: Send, error: ApiError) -> None:
    body = error.body_bytes()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _validation_error(exc: RequestValidationError) -> ApiError:
    first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": (), "type": ""}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return invalid_request(
            "We could not parse the JSON body of your request.", code="invalid_json"
        )
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    if param is None:
        return invalid_request(
            f"The request body must be a JSON object ({msg}).", code="invalid_body"
        )
    if first.get("type") == "missing":
        return invalid_request(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    return invalid_request(
        f"Invalid value for '{param}': {msg}.", param=param, code="invalid_value"
    )


def create_app(gateway: Gateway, *, manage_engines: bool = True) -> FastAPI:
    """The ASGI app; with `manage_engines` the engines start and stop in its lifespan."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_engines:
            await gateway.start()
        try:
            yield
        finally:
            if manage_engines:
                await gateway.stop()

    app = FastAPI(title="slmkit OpenAI-compatible gateway", version="1", lifespan=lifespan)
    _add_error_handlers(app, gateway)
    _add_routes(app, gateway)
    config = gateway.config
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(
        AuthAndLimitsMiddleware,
        api_keys=gateway.key_limits.names_by_value,
        max_body_bytes=config.limits.max_body_bytes,
        metrics_token=env_secret(
            config.metrics_token_env, "metrics_token_env", hint="export it before `slm serve`"
        ),
    )
    return app


ENDPOINT_NAMES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/feedback": "feedback",
}


def _endpoint_name(request: Request) -> str:
    return ENDPOINT_NAMES.get(request.url.path, "other")


def _add_error_handlers(app: FastAPI, gateway: Gateway) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = _validation_error(exc)
        gateway.metrics.requests.labels(_endpoint_name(request), "unknown", str(err.status)).inc()
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        err = ApiError(exc.status_code, str(exc.detail), code=code)
        return JSONResponse(
            err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        err = api_errors.internal_error(exc)  # an engine's error in the API's terms, else a 500
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _add_routes(app: FastAPI, gateway: Gateway) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await gateway.handle_generation(body, request, "chat")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await gateway.handle_generation(body, request, "completions")

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return gateway.list_models()

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        return gateway.model_card(model_id)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
        return await gateway.embed(body, request)

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest) -> dict[str, Any]:
        return await gateway.feedback(body)

    @app.get("/health")
    @app.get("/ready")
    async def health() -> JSONResponse:
        """The engines' report: 200 when every engine is ready, else 503 (a readiness probe)."""
        report = await gateway.health()
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    @app.get("/live")
    async def live() -> dict[str, str]:
        """200 while the process serves HTTP (a liveness probe): a restarting engine is no reason
        to kill the pod, the gateway restarts it itself."""
        return {"status": "ok"}

    @app.get(METRICS_PATH)
    async def metrics() -> Response:
        data = await asyncio.to_thread(gateway.render_metrics)
        return Response(data, media_type="text/plain; version=0.0.4; charset=utf-8")
