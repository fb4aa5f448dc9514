"""What the embedder and reranker services share: the app (the model loads in the background
from its lifespan), `GET /info`, `GET /ready`, the accessors routes use, and the check of the
model a request names."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse

from app import __version__
from app.config import ModelSettings
from app.errors import InvalidInput, Unavailable
from app.models import Embedder, Reranker
from app.models.batching import resolve_batch_tokens
from app.protocol.common import InfoResponse
from app.resilience import TIMEOUT_HEADER, call_deadline, request_arrival
from services.http import ERROR_RESPONSES, install, ready_response

common_routes = APIRouter(responses=ERROR_RESPONSES)


def served_model(request: Request) -> Embedder | Reranker:
    """The service's model; routes take it as a dependency typed as the kind they serve."""
    model: Embedder | Reranker = request.app.state.model
    return model


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
    )


@common_routes.get("/ready", tags=["ops"], summary="Readiness: the model is loaded and warmed up.")
async def ready(request: Request) -> JSONResponse:
    model = served_model(request)
    return ready_response(model.ready, {"model": model.info.model_id, "status": model.status})


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


def check_model_name(requested: str | None, served: str) -> None:
    """A request naming another model must not silently get this one's output."""
    if requested and requested not in (served, served.rstrip("/").rsplit("/", 1)[-1]):
        raise InvalidInput(f"this service serves {served!r}, not {requested!r}", field="model")


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
    app.state.unhealthy = lambda: None if model.healthy else f"{service} model: {model.status}"
    install(app, service, settings.max_request_bytes)
    app.include_router(router, dependencies=[Depends(caller_deadline)])
    app.include_router(common_routes)
    return app
