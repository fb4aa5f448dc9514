"""Embedder routes: OpenAI /v1/embeddings (+ NVIDIA input_type/truncate), /info, /v1/models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.config import EmbedderSettings
from app.models import Embedder
from app.models.limits import check_input_limits
from app.protocol import EmbeddingsRequest, EmbeddingsResponse, InfoResponse
from services.common import ERROR_RESPONSES, check_model_name, model_info, model_ready

router = APIRouter(responses=ERROR_RESPONSES)


def _embedder(request: Request) -> Embedder:
    embedder: Embedder = request.app.state.model
    return embedder


def _settings(request: Request) -> EmbedderSettings:
    settings: EmbedderSettings = request.app.state.settings
    return settings


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingsResponse,
    tags=["embeddings"],
    summary="OpenAI-compatible embeddings, with NVIDIA's input_type and truncate.",
)
async def embeddings(body: EmbeddingsRequest, request: Request) -> EmbeddingsResponse:
    embedder, settings = _embedder(request), _settings(request)
    texts = body.texts()
    check_input_limits(
        texts,
        max_items=settings.max_items_per_request,
        max_chars=settings.max_chars_per_item,
        field="input",
    )
    check_model_name(body.model, embedder.info.model_id)
    result = await embedder.embed(texts, body.input_type, body.truncate)
    return EmbeddingsResponse.build(
        result.vectors, embedder.info.model_id, result.prompt_tokens, body.encoding_format
    )


@router.get(
    "/info",
    response_model=InfoResponse,
    tags=["info"],
    summary="TEI-style model information and limits.",
)
async def info(request: Request) -> InfoResponse:
    return model_info(_embedder(request), _settings(request))


@router.get("/v1/models", tags=["embeddings"], summary="OpenAI-compatible model list.")
async def models(request: Request) -> dict[str, Any]:
    model_id = _embedder(request).info.model_id
    return {
        "object": "list",
        "data": [{"id": model_id, "object": "model", "owned_by": "semsearch"}],
    }


@router.get("/ready", tags=["ops"], summary="Readiness: the model is loaded and warmed up.")
async def ready(request: Request) -> JSONResponse:
    return model_ready(_embedder(request))
