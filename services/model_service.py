"""What the embedder and reranker services share: the app (the model loads in the background
from its lifespan), `GET /info`, `GET /ready`, the accessors routes use, and the check of the
model a request names."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse

from app import __version__, metrics
from app.config import ModelSettings
from app.errors import InputTooLong, ModelNotFound, Unavailable
from app.logs import get_logger
from app.models import Embedder, Reranker, readiness
from app.models.batch_limits import resolve_batch_tokens
from app.protocol.common import ErrorResponse, InfoResponse, ModelCard, ModelList
from app.resilience import TIMEOUT_HEADER, call_deadline, request_arrival
from app.types import Truncate
from services.http import ERROR_RESPONSES, install, ready_response

log = get_logger(__name__)
T = TypeVar("T")
common_routes = APIRouter(responses=ERROR_RESPONSES)


def served_model(request: Request) -> Embedder | Reranker:
    """The service's model; routes take it as a dependency typed as the kind they serve."""
    model: Embedder | Reranker = request.app.state.model
    return model


async def served_model_dependency(request: Request) -> Embedder | Reranker:
    """`served_model` as routes' dependency. `async`, so FastAPI calls it on the event loop:
    a plain `def` dependency runs in its thread pool, a thread hop for every request (py-spy
    found the embedder's requests in AnyIO worker threads)."""
    return served_model(request)


def served_settings(request: Request) -> ModelSettings:
    settings: ModelSettings = request.app.state.settings
    return settings


@common_routes.get(
    "/info",
    response_model=InfoResponse,
    tags=["info"],
    summary="TEI-style model information and batching limits.",
)
async def info(request: Request) -> InfoResponse:
    """`GET /info` (TEI's convention): model, window and limits."""
    model, settings = served_model(request), served_settings(request)
    if not model.ready:
        raise Unavailable(f"model is not loaded ({model.status})")
    loaded = model.info
    return InfoResponse(
        model_id=loaded.model_id,
        kind=loaded.kind,
        dimension=loaded.dimension,
        max_input_tokens=loaded.max_tokens,
        backend=loaded.backend,
        device=loaded.device,
        max_items_per_request=settings.max_items_per_request,
        max_chars_per_item=settings.max_chars_per_item,
        max_batch_size=settings.max_batch_size,
        max_batch_tokens=resolve_batch_tokens(settings.max_batch_tokens, loaded.device),
        max_wait_ms=settings.max_wait_ms,
        max_queue_items=settings.max_queue_items,
        served_model_names=settings.served_model_names,
    )


@common_routes.get("/ready", tags=["ops"], summary="Readiness: the model is loaded and warmed up.")
async def ready(request: Request) -> JSONResponse:
    model = served_model(request)
    return ready_response(model.ready, readiness(model))


async def caller_deadline(
    timeout_ms: Annotated[
        int | None,
        Header(
            alias=TIMEOUT_HEADER,
            ge=0,
            description="How long the caller waits for the answer, in ms from sending the "
            "request (as gRPC's grpc-timeout). A request the queue would answer later is "
            "refused at once with 429 and Retry-After, instead of being computed for nobody.",
        ),
    ] = None,
) -> None:
    """The caller's deadline, for the batch queue (a dependency of the model routes, so it is
    in their OpenAPI description)."""
    if timeout_ms is not None:
        arrived = request_arrival.get() or time.monotonic()
        call_deadline.set(arrived + timeout_ms / 1000)


def served_names(request: Request) -> list[str]:
    """The names a request's `model` may use: the model's id first, then its aliases."""
    model_id = served_model(request).info.model_id
    aliases = served_settings(request).served_model_names
    return [model_id, *(name for name in aliases if name != model_id)]


def check_model_name(requested: str | None, served: list[str]) -> None:
    """A request naming another model must not silently get this one's output: a client that
    embeds a collection's documents with the model it names would mix two vector spaces.
    `served` is the model's id (whose last path segment is accepted too) and its aliases.

    Raises:
        ModelNotFound: `requested` is none of them (404, naming the served names).
    """
    if not requested:
        return
    model_id = served[0]
    if requested in served or requested == model_id.rstrip("/").rsplit("/", 1)[-1]:
        return
    raise ModelNotFound(
        f"model {requested!r} is not served here; served names: "
        + ", ".join(repr(name) for name in served),
        field="model",
    )


# Documented on the routes whose request names a model: what their 404 means.
MODEL_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {
        "model": ErrorResponse,
        "description": "`model` names neither the served model nor one of its aliases "
        "(`model_not_found`, field `model`); the message lists the served names.",
    }
}


@common_routes.get(
    "/v1/models",
    response_model=ModelList,
    tags=["info"],
    summary="OpenAI-compatible model list: the served model and its aliases.",
)
async def models(request: Request) -> ModelList:
    return ModelList(data=[ModelCard(id=name) for name in served_names(request)])


async def auto_truncated(
    request: Request,
    call: Callable[[Truncate], Awaitable[T]],
    asked: Truncate | None,
    auto: Truncate = Truncate.END,
) -> T:
    """`call(asked)`; when the request did not say (`asked` None) and the service truncates by
    default (`auto_truncate`), an input over the window is cut at the `auto` end instead of
    refused, and the cut is logged and counted.

    The request is tried whole first, so a cut is known for certain (the models report only
    the refusal) and inputs that fit cost nothing extra: only an over-long request is
    tokenized twice, and nothing reaches the model before the refusal.
    """
    settings = served_settings(request)
    if asked is not None or not settings.auto_truncate:
        return await call(asked or Truncate.NONE)
    try:
        return await call(Truncate.NONE)
    except InputTooLong as exc:
        service: str = request.app.state.service
        log.info("auto_truncated", service=service, field=exc.field, reason=exc.message)
        metrics.AUTO_TRUNCATED.labels(service).inc()
        return await call(auto)


def create_model_app(
    service: str, settings: ModelSettings, model: Embedder | Reranker, router: APIRouter
) -> FastAPI:
    """The app of a model service: `model` loads in the background from the lifespan, so
    /health answers at once and /ready turns 200 when the model is loaded and warmed up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(model.start())
        try:
            yield
        finally:
            loading.cancel()
            await model.stop()

    app = FastAPI(title=f"semsearch {service}", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.model = model
    app.state.service = service
    app.state.unhealthy = lambda: None if model.healthy else f"{service} model: {model.status}"
    install(app, service, settings.max_request_bytes)
    app.include_router(router, dependencies=[Depends(caller_deadline)])
    app.include_router(common_routes)
    return app
