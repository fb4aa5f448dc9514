"""Reranking: NVIDIA `POST /v1/ranking` and Cohere/TEI-style `POST /rerank`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidatorFunctionWrapHandler, WrapValidator

from app.protocol.common import StrictRequest, Text, valid_text
from app.types import Truncate


class RankingText(StrictRequest):
    text: Text


_MODEL = (
    "The served model's id (or its last path segment) or one of its aliases; another name is "
    "refused with 404."
)


class RankingRequest(StrictRequest):
    model: str | None = Field(None, description=_MODEL)
    query: RankingText
    passages: list[RankingText] = Field(min_length=1)
    truncate: Literal[Truncate.NONE, Truncate.END] = Field(
        Truncate.NONE,
        description="NONE refuses long pairs (422); END cuts them. Not given: NONE, or END when "
        "the service truncates by default (auto_truncate).",
    )

    def asked_truncate(self) -> Truncate | None:
        """`truncate` when the request sets it; None leaves it to the service's default."""
        return self.truncate if "truncate" in self.model_fields_set else None


class Ranking(BaseModel):
    index: int
    logit: float


class RankingResponse(BaseModel):
    rankings: list[Ranking]


class RerankDocument(StrictRequest):
    text: Text


def _document(value: Any, handler: ValidatorFunctionWrapHandler) -> RerankDocument:
    # A plain string is checked here so its error names `documents[i]`, not a union member.
    if isinstance(value, str):
        return RerankDocument(text=valid_text(value))
    document: RerankDocument = handler(value)
    return document


Document = Annotated[
    RerankDocument, WrapValidator(_document, json_schema_input_type=str | RerankDocument)
]


class RerankRequest(StrictRequest):
    model: str | None = Field(None, description=_MODEL)
    query: Text = Field(min_length=1)
    documents: list[Document] = Field(min_length=1)
    top_n: int | None = Field(None, ge=1, description="Return only the best `top_n`.")
    return_documents: bool = False
    raw_scores: bool = Field(False, description="TEI: logits instead of sigmoid(logit).")
    truncate: bool = Field(
        False,
        description="TEI: cut long pairs at the end instead of 422. Not given: false, or true "
        "when the service truncates by default (auto_truncate).",
    )

    def texts(self) -> list[str]:
        return [d.text for d in self.documents]

    def asked_truncate(self) -> Truncate | None:
        """The truncation the request sets; None leaves it to the service's default."""
        if "truncate" not in self.model_fields_set:
            return None
        return Truncate.END if self.truncate else Truncate.NONE


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    id: str | None = None
    model: str
    results: list[RerankResult]


def rank_order(scores: list[float]) -> list[int]:
    """Indices by descending score; equal scores keep input order (stable)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])
