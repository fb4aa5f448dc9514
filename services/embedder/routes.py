"""Embedder routes: OpenAI /v1/embeddings (+ NVIDIA input_type/truncate), TEI /embed. /info,
/ready and /v1/models are the model services' common routes."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from app.errors import InputTooLong, InvalidInput
from app.models import Embedder, Embeddings
from app.models.limits import check_input_limits
from app.protocol.embeddings import EmbeddingsRequest, EmbeddingsResponse, TeiEmbedRequest
from app.types import FloatArray, InputType, Truncate
from services.http import ERROR_RESPONSES, unless_disconnected
from services.model_service import (
    MODEL_NOT_FOUND,
    auto_truncated,
    check_model_name,
    served_model_dependency,
    served_names,
    served_settings,
)

router = APIRouter(responses=ERROR_RESPONSES)
ServedEmbedder = Annotated[Embedder, Depends(served_model_dependency)]


async def _embed(
    request: Request,
    embedder: Embedder,
    texts: list[str],
    field: str,
    input_type: InputType,
    truncate: Truncate | None,
    normalize: bool,
    auto: Truncate = Truncate.END,
) -> Embeddings:
    """Embeddings of `texts`, which this API calls `field` (errors name `field[i]`);
    `truncate` None: the request did not say (the service's auto_truncate decides)."""
    settings = served_settings(request)
    check_input_limits(
        texts,
        max_items=settings.max_items_per_request,
        max_chars=settings.max_chars_per_item,
        field=field,
    )

    async def call(mode: Truncate) -> Embeddings:
        return await unless_disconnected(
            request, embedder.embed(texts, input_type, mode, normalize)
        )

    try:
        return await auto_truncated(request, call, truncate, auto)
    except InputTooLong as exc:  # name the field as this API calls it
        exc.field = (exc.field or "input").replace("input", field, 1)
        raise


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingsResponse,
    responses=MODEL_NOT_FOUND,
    tags=["embeddings"],
    summary="OpenAI-compatible embeddings, with NVIDIA's input_type and truncate.",
)
async def embeddings(
    body: EmbeddingsRequest, request: Request, embedder: ServedEmbedder
) -> EmbeddingsResponse:
    check_model_name(body.model, served_names(request))
    result = await _embed(
        request,
        embedder,
        body.texts(),
        "input",
        body.input_type,
        body.asked_truncate(),
        body.normalize,
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
        body.asked_truncate(),
        body.normalize,
        auto=body.direction(),
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
