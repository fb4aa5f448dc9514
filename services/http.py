"""FastAPI glue every service shares: the error shape, request ids, body limits, metrics,
/health, and the module-level app that `uvicorn services.<name>.main:app` builds.

Pure ASGI middleware (not BaseHTTPMiddleware): it adds one small wrapper per request and
leaves streaming and cancellation alone.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics, tracing
from app.blas import use_one_numpy_blas_thread
from app.config import ServiceSettings
from app.errors import (
    ClientDisconnected,
    PayloadTooLarge,
    RetryableError,
    SemsearchError,
    Unauthorized,
    error_body,
    http_status,
)
from app.logs import (
    REQUEST_ID_HEADER,
    bind_request_id,
    clear_request_context,
    configure_logging,
    get_logger,
    new_request_id,
)
from app.models.priority import PRIORITY_HEADER, priority_from_header, work_priority
from app.models.timing import RequestTiming, request_timing
from app.protocol.common import (
    ErrorResponse,
    HealthResponse,
    ReadyResponse,
    field_name,
    problem_message,
)
from app.resilience import request_arrival

log = get_logger("semsearch.http")
T = TypeVar("T")
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Probes and scrapes (the gateway asks its model services for /info every few seconds): a
# trace of each would bury the searches.
_UNTRACED = frozenset({"/health", "/ready", "/metrics", "/info"})

# Documented on every route, so the OpenAPI schema (and schemathesis) knows the error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (404, 413, 422, 429, 503, 504)
}
for _status in (429, 503):  # "come back later": when, in whole seconds
    ERROR_RESPONSES[_status]["headers"] = {
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "schema": {"type": "integer", "minimum": 1},
        }
    }


def install(app: FastAPI, service: str, max_request_bytes: int) -> None:
    """Add the shared middleware, error handlers and /health + /metrics to a service app."""
    app.add_middleware(RequestContext, service=service, max_body=max_request_bytes)
    # Starlette's exception middleware answers these inside RequestContext. Anything else
    # (a bug) is answered by RequestContext itself, so the 500 carries the request id too.
    for error_class in (SemsearchError, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(error_class, _handle_error)
    app.add_api_route(
        "/health",
        health,
        methods=["GET"],
        response_model=HealthResponse,
        responses={503: {"model": ErrorResponse}},
        tags=["ops"],
        summary="Liveness: the process answers and its models work.",
    )
    app.add_api_route(
        "/metrics",
        metrics_endpoint,
        methods=["GET"],
        tags=["ops"],
        summary="Prometheus metrics.",
        response_class=Response,
    )


async def health(request: Request) -> Response:
    """503 once an in-process model keeps failing, so an orchestrator restarts the process."""
    check: Callable[[], str | None] | None = getattr(request.app.state, "unhealthy", None)
    problem = check() if check is not None else None
    if problem is not None:
        return JSONResponse(error_body("unhealthy", problem), status_code=503)
    return JSONResponse(HealthResponse().model_dump())


async def metrics_endpoint() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def ready_response(ready: bool, components: dict[str, Any]) -> JSONResponse:
    """`GET /ready`: 200 when the service can answer, 503 (with the reasons) when not."""
    body = ReadyResponse(status="ready" if ready else "not_ready", components=components)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def error_response(error: SemsearchError) -> JSONResponse:
    headers = {}
    if isinstance(error, RetryableError):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        error_body(error.type, error.message, error.field),
        status_code=http_status(error),
        headers=headers,
    )


async def _handle_error(request: Request, error: Exception) -> JSONResponse:
    """The one handler: every error a service can raise becomes the one JSON error shape."""
    if isinstance(error, SemsearchError):
        return _semsearch_error(error)
    if isinstance(error, RequestValidationError):
        return _validation_error(error)
    if isinstance(error, StarletteHTTPException):
        response = _http_error(error)
        if error.status_code == 405:  # every method of the path, not the first route's only
            response.headers["Allow"] = ", ".join(_allowed(request))
        return response
    return _internal_error(error)


def _allowed(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def _internal_error(error: BaseException) -> JSONResponse:
    log.exception("unhandled_error", error=repr(error))
    return JSONResponse(
        error_body("internal_error", "internal error; the request id is in the logs"),
        status_code=500,
    )


def _semsearch_error(error: SemsearchError) -> JSONResponse:
    if http_status(error) >= 500:
        log.warning("request_failed", error_type=error.type, error=error.message)
    return error_response(error)


def _validation_error(error: RequestValidationError) -> JSONResponse:
    problems = []
    first_field: str | None = None
    for item in error.errors():
        loc = [part for part in item.get("loc", ()) if part != "body"]
        if item.get("type") == "json_invalid":
            return JSONResponse(
                error_body(
                    "invalid_json", f"request body is not valid JSON: {item.get('msg')}", "body"
                ),
                status_code=422,
            )
        name = field_name(loc)
        first_field = first_field or name
        problems.append(f"{name}: {problem_message(item)}")
    return JSONResponse(
        error_body("invalid_request", "; ".join(problems) or "invalid request", first_field),
        status_code=422,
    )


def _http_error(error: StarletteHTTPException) -> JSONResponse:
    if error.status_code == 400 and "parsing the body" in str(error.detail):
        # a body FastAPI cannot even decode (not UTF-8): the same answer as invalid JSON
        return JSONResponse(
            error_body("invalid_json", f"request body is not valid JSON: {error.detail}", "body"),
            status_code=422,
        )
    kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return JSONResponse(
        error_body(kind, str(error.detail)),
        status_code=error.status_code,
        headers=getattr(error, "headers", None),
    )


class RequestContext:
    """Per request: bind a request id, cap the body size, count and time, log one line."""

    def __init__(self, app: ASGIApp, service: str, max_body: int) -> None:
        self.app = app
        self.service = service
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get(REQUEST_ID_HEADER.lower(), "")
        request_id = given if _VALID_REQUEST_ID.fullmatch(given) else new_request_id()
        bind_request_id(request_id)
        timing = RequestTiming()
        request_timing.set(timing)
        work_priority.set(priority_from_header(headers.get(PRIORITY_HEADER)))
        request_arrival.set(time.monotonic())
        started = time.perf_counter()
        status = 500
        responded = False
        traced = (
            None if scope["path"] in _UNTRACED else tracing.server_span(scope["method"], headers)
        )

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                headers = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
                ]
                if timing.compute_s or timing.queue_s:  # TEI's headers, in milliseconds
                    headers.append((b"x-queue-time", f"{timing.queue_s * 1000:.2f}".encode()))
                    headers.append((b"x-compute-time", f"{timing.compute_s * 1000:.2f}".encode()))
                message["headers"] = headers
            await send(message)

        try:
            declared = headers.get("content-length", "")
            if declared.isdigit():
                if int(declared) > self.max_body:
                    await self._too_large(scope, receive, send_with_id)
                    return
            elif scope["method"] in ("POST", "PUT", "PATCH"):
                # A chunked body has no declared size: read it here, up to the limit.
                buffered = await _read_limited(receive, self.max_body)
                if buffered is None:
                    await self._too_large(scope, receive, send_with_id)
                    return
                receive = _replay(buffered, receive)
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Answered here, inside the request context: the 500 carries x-request-id. The
            # exception still goes up, so the server (and a test transport) sees it.
            if not responded:
                await _internal_error(exc)(scope, receive, send_with_id)
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope["method"]
            metrics.HTTP_REQUESTS.labels(self.service, template, method, str(status)).inc()
            metrics.HTTP_LATENCY.labels(self.service, template, method, str(status)).observe(
                elapsed
            )
            if traced is not None:
                traced.end(template, status, timing)
            if template not in ("/health", "/metrics", "/ready"):
                log.info(
                    "request",
                    method=method,
                    path=scope["path"],
                    status=status,
                    ms=round(elapsed * 1000, 2),
                )
            clear_request_context()

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(f"request body is larger than {self.max_body} bytes", field="body")
        await error_response(error)(scope, receive, send)


async def _read_limited(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # client went away; the app will see an empty body
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Callable[[], Awaitable[Message]]:
    """A `receive` that hands the buffered body to the app, then defers to the server."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client goes away first: its queued items are then
    dropped before they reach the model."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        metrics.CLIENT_DISCONNECTS.inc()
        raise ClientDisconnected("client disconnected before the answer was ready")
    return task.result()


async def _disconnected(request: Request) -> None:
    # After the body was read, the next `receive` waits for the client's disconnect (or for
    # the server to finish the response).
    while (await request.receive())["type"] != "http.disconnect":
        pass


S = TypeVar("S", bound=ServiceSettings)


def app_from_environment(
    service: str, settings_class: type[S], create_app: Callable[[S], FastAPI]
) -> Callable[[str], FastAPI]:
    """A module `__getattr__` that builds `app` from the environment on first access, with
    logging, tracing and numpy's threads (`app.blas`) configured: `uvicorn
    services.gateway.main:app` and `semsearch serve` use it, while
    importing the module (tests) has no side effects."""

    def module_getattr(name: str) -> FastAPI:
        if name != "app":
            raise AttributeError(name)
        settings = settings_class()
        configure_logging(settings.log_level, settings.log_format, service)
        tracing.configure(service)
        use_one_numpy_blas_thread()  # its spinning pool would take the model's cores
        return create_app(settings)

    return module_getattr
