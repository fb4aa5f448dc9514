"""Reranker routes: NVIDIA /v1/ranking and Cohere/TEI-style /rerank. /info and /ready are the
model services' common routes."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from app.errors import InputTooLong
from app.logs import current_request_id
from app.models import Reranker
from app.models.limits import check_input_limits, check_text_length
from app.protocol.ranking import (
    Ranking,
    RankingRequest,
    RankingResponse,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    rank_order,
)
from app.types import Truncate
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
ServedReranker = Annotated[Reranker, Depends(served_model_dependency)]


async def _score(
    request: Request,
    reranker: Reranker,
    model: str | None,
    query: str,
    passages: list[str],
    truncate: Truncate | None,
    field: str,
) -> list[float]:
    """Scores of `passages`, which this API calls `field` (errors name `field[i]`);
    `truncate` None: the request did not say (the service's auto_truncate decides)."""
    settings = served_settings(request)
    check_input_limits(
        passages,
        max_items=settings.max_items_per_request,
        max_chars=settings.max_chars_per_item,
        field=field,
    )
    check_text_length(query, max_chars=settings.max_chars_per_item, field="query")
    check_model_name(model, served_names(request))

    async def call(mode: Truncate) -> list[float]:
        return await unless_disconnected(request, reranker.score(query, passages, mode))

    try:
        return await auto_truncated(request, call, truncate)
    except InputTooLong as exc:  # the models name passages `passages[i]`
        if exc.field and exc.field.startswith("passages"):
            exc.field = field + exc.field.removeprefix("passages")
        raise


@router.post(
    "/v1/ranking",
    response_model=RankingResponse,
    responses=MODEL_NOT_FOUND,
    tags=["ranking"],
    summary="NVIDIA-compatible reranking: logits, best first.",
)
async def ranking(
    body: RankingRequest, request: Request, reranker: ServedReranker
) -> RankingResponse:
    passages = [p.text for p in body.passages]
    scores = await _score(
        request, reranker, body.model, body.query.text, passages, body.asked_truncate(), "passages"
    )
    return RankingResponse(rankings=[Ranking(index=i, logit=scores[i]) for i in rank_order(scores)])


@router.post(
    "/rerank",
    response_model=RerankResponse,
    response_model_exclude_none=True,
    responses=MODEL_NOT_FOUND,
    tags=["ranking"],
    summary="Cohere/TEI-compatible reranking.",
)
async def rerank(body: RerankRequest, request: Request, reranker: ServedReranker) -> RerankResponse:
    documents = body.texts()
    scores = await _score(
        request, reranker, body.model, body.query, documents, body.asked_truncate(), "documents"
    )
    order = rank_order(scores)[: body.top_n]
    return RerankResponse(
        id=current_request_id(),
        model=reranker.info.model_id,
        results=[
            RerankResult(
                index=i,
                relevance_score=scores[i] if body.raw_scores else _sigmoid(scores[i]),
                document=RerankDocument(text=documents[i]) if body.return_documents else None,
            )
            for i in order
        ],
    )


def _sigmoid(logit: float) -> float:
    return (
        1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1.0 + math.exp(logit))
    )
