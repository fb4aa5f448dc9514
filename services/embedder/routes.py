"""Embedder routes: OpenAI /v1/embeddings (+ NVIDIA input_type/truncate), TEI /embed, OpenAI
/v1/models. /info and /ready are the model services' common routes."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from app.errors import InputTooLong, InvalidInput
from app.models import Embedder, Embeddings
from app.models.limits import check_input_limits
from app.protocol.embeddings import EmbeddingsRequest, EmbeddingsResponse, TeiEmbedRequest
from app.types import FloatArray, InputType, Truncate
from services.http import ERROR_RESPONSES, unless_disconnected
from services.model_service import check_model_name, served_model, served_settings

router = APIRouter(responses=ERROR_RESPONSES)
ServedEmbedder = Annotated[Embedder, Depends(served_model)]


async def _embed(
    request: Request,
    embedder: Embedder,
    texts: list[str],
    field: str,
    input_type: InputType,
    truncate: Truncate,
    normalize: bool,
) -> Embeddings:
    settings = served_settings(request)
    check_input_limits(
        texts,
        max_items=settings.max_items_per_request,
        max_chars=settings.max_chars_per_item,
        field=field,
    )
    try:
        return await unless_disconnected(
            request, embedder.embed(texts, input_type, truncate, normalize)
        )
    except InputTooLong as exc:  # name the field as this API calls it
        exc.field = (exc.field or "input").replace("input", field, 1)
        raise


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingsResponse,
    tags=["embeddings"],
    summary="OpenAI-compatible embeddings, with NVIDIA's input_type and truncate.",
)
async def embeddings(
    body: EmbeddingsRequest, request: Request, embedder: ServedEmbedder
) -> EmbeddingsResponse:
    check_model_name(body.model, embedder.info.model_id)
    result = await _embed(
        request, embedder, body.texts(), "input", body.input_type, body.truncate, body.normalize
    )
    vectors = result.vectors
    if body.dimensions is not None:
        vectors = shorten(vectors, body.dimensions, body.normalize)
    return EmbeddingsResponse.build(
        vectors, embedder.info.model_id, result.prompt_tokens, body.encoding_format
    )


@router.post(
    "/embed",
    tags=["embeddings"],
    summary="TEI-compatible embeddings.",
    response_model=list[list[float]],
)
async def embed(body: TeiEmbedRequest, request: Request, embedder: ServedEmbedder) -> JSONResponse:
    result = await _embed(
        request,
        embedder,
        body.texts(),
        "inputs",
        body.input_type(),
        body.truncate_mode(),
        body.normalize,
    )
    vectors = result.vectors
    if body.dimensions is not None:
        vectors = shorten(vectors, body.dimensions, body.normalize)
    return JSONResponse(vectors.tolist())


def shorten(vectors: FloatArray, dimensions: int, normalize: bool) -> FloatArray:
    """OpenAI's `dimensions`: keep the first N components (Matryoshka-style), renormalized."""
    if dimensions > vectors.shape[1]:
        raise InvalidInput(
            f"dimensions must be at most {vectors.shape[1]} for this model", field="dimensions"
        )
    cut = np.ascontiguousarray(vectors[:, :dimensions])
    if normalize:
        cut /= np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
    return cut


@router.get("/v1/models", tags=["embeddings"], summary="OpenAI-compatible model list.")
async def models(embedder: ServedEmbedder) -> dict[str, Any]:
    model_id = embedder.info.model_id
    return {
        "object": "list",
        "data": [{"id": model_id, "object": "model", "owned_by": "semsearch"}],
    }
