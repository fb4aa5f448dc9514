"""Gateway routes: POST /v1/search, the collection list, readiness and the playground page."""

from __future__ import annotations

from importlib import resources
from typing import Any

import structlog
from fastapi import APIRouter, Depends, Request, Security
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.auth import ApiKeys
from app.config import GatewaySettings
from app.protocol.common import ErrorResponse
from app.protocol.search import SearchRequest, SearchResponse
from app.search.pipeline import SearchPipeline
from services.http import ERROR_RESPONSES, ready_response

router = APIRouter(responses=ERROR_RESPONSES)

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="or `X-API-Key: <key>`")


async def authorize(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
    api_key: str | None = Security(_api_key),
) -> None:
    """401 without a valid key, 429 past the key's rate; a no-op when no keys are configured."""
    keys: ApiKeys = request.app.state.api_keys
    if keys.enabled:
        key_id = keys.check(api_key or (bearer.credentials if bearer else None))
        structlog.contextvars.bind_contextvars(api_key_id=key_id)  # never the key itself


def _pipeline(request: Request) -> SearchPipeline:
    pipeline: SearchPipeline = request.app.state.pipeline
    return pipeline


PROTECTED: dict[str, Any] = {
    "dependencies": [Depends(authorize)],
    "responses": {401: {"model": ErrorResponse}},
}


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
    result = await _pipeline(request).search(query)
    return SearchResponse.from_result(result)


@router.get(
    "/v1/collections", tags=["search"], **PROTECTED, summary="Collections served, with generations."
)
async def collections(request: Request) -> dict[str, Any]:
    return {"collections": _pipeline(request).collections.status()}


@router.post(
    "/admin/reload",
    tags=["ops"],
    summary="Load newly published index generations now (they are also polled).",
    **PROTECTED,
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
