"""Gateway routes: POST /v1/search, the collection list, readiness and the playground page."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import structlog
from fastapi import APIRouter, Depends, Request, Security
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.auth import OPEN, ApiKeys, Grant, Scope
from app.config import GatewaySettings
from app.protocol.common import ErrorResponse
from app.protocol.search import SearchRequest, SearchResponse
from app.search.pipeline import SearchPipeline
from services.http import ERROR_RESPONSES, ready_response

router = APIRouter(responses=ERROR_RESPONSES)

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="or `X-API-Key: <key>`")


def require(scope: Scope) -> Callable[..., Awaitable[None]]:
    """A dependency: 401 without a valid key, 403 for a key without `scope` (or without the
    collection named in the path), 429 past the key's rate; everything is allowed when no
    keys are configured. The key's grant is left in `request.state.grant`."""

    async def authorize(
        request: Request,
        bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
        api_key: str | None = Security(_api_key),
    ) -> None:
        keys: ApiKeys = request.app.state.api_keys
        grant = OPEN
        if keys.enabled:
            grant = keys.grant(api_key or (bearer.credentials if bearer else None))
            structlog.contextvars.bind_contextvars(api_key_id=grant.key_id)  # never the key
        request.state.grant = grant
        grant.check(scope, request.path_params.get("name"))

    return authorize


def grant_of(request: Request) -> Grant:
    grant: Grant = getattr(request.state, "grant", OPEN)
    return grant


def _pipeline(request: Request) -> SearchPipeline:
    pipeline: SearchPipeline = request.app.state.pipeline
    return pipeline


def protected(
    scope: Scope, responses: dict[int | str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Route options: the scope it needs, and the answers auth adds to its OpenAPI (with the
    route's own `responses`)."""
    return {
        "dependencies": [Depends(require(scope))],
        "responses": {
            401: {"model": ErrorResponse},
            403: {"model": ErrorResponse},
            **(responses or {}),
        },
    }


PROTECTED = protected(Scope.READ)


@router.post(
    "/v1/search",
    response_model=SearchResponse,
    tags=["search"],
    **PROTECTED,
    summary="Two-stage semantic search: ANN candidates, reranked by a cross-encoder.",
)
async def search(body: SearchRequest, request: Request) -> SearchResponse:
    settings: GatewaySettings = request.app.state.settings
    query = body.to_query(
        default_collection=settings.default_collection,
        default_top_k=settings.default_top_k,
        default_candidates=settings.default_candidates,
    )
    grant_of(request).check(Scope.READ, query.collection)
    result = await _pipeline(request).search(query)
    return SearchResponse.from_result(result)


@router.get(
    "/v1/collections", tags=["search"], **PROTECTED, summary="Collections served, with generations."
)
async def collections(request: Request) -> dict[str, Any]:
    grant = grant_of(request)
    served = _pipeline(request).collections.status()
    return {"collections": {name: entry for name, entry in served.items() if grant.allows(name)}}


@router.post(
    "/admin/reload",
    tags=["ops"],
    summary="Load newly published index generations now (they are also polled).",
    **protected(Scope.WRITE),
)
async def reload(request: Request) -> dict[str, list[str]]:
    return {"reloaded": await _pipeline(request).collections.reload()}


@router.get(
    "/ready",
    tags=["ops"],
    summary="Readiness: the query embedder and the default collection can serve.",
)
async def ready(request: Request) -> JSONResponse:
    is_ready, components = _pipeline(request).status()
    return ready_response(is_ready, components)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    page = resources.files("services.gateway").joinpath("static/playground.html").read_text()
    return HTMLResponse(page)
