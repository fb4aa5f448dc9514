"""Wire schemas, defined once: the services validate with them, the clients build them.

Shapes follow what clients already speak: OpenAI/NVIDIA embeddings, NVIDIA ranking,
Cohere/TEI rerank. Requests convert themselves into engine inputs; the engine never sees
these classes.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)

from app.types import (
    FloatArray,
    InputType,
    ModelInfo,
    SearchQuery,
    SearchResult,
    Truncate,
    lone_surrogate_at,
)


class _Request(BaseModel):
    # Unknown fields are refused, so a typo (`topk`) is a clear 422, not a silent default.
    model_config = ConfigDict(extra="forbid")


def _valid_text(value: str) -> str:
    at = lone_surrogate_at(value)
    if at is not None:
        raise ValueError(f"is not valid Unicode text: a lone surrogate at character {at}")
    return value


Text = Annotated[str, AfterValidator(_valid_text)]
"""A request text: any string that can be encoded as UTF-8 (422 naming the field if not)."""


def _one_or_many(value: Any, handler: ValidatorFunctionWrapHandler) -> list[str]:
    # A lone text is checked here so its error names the field itself (`input`, not `input[0]`).
    if isinstance(value, str):
        return [_valid_text(value)]
    texts: list[str] = handler(value)
    return texts


Texts = Annotated[
    list[Text],
    WrapValidator(_one_or_many, json_schema_input_type=str | list[str]),
    Field(min_length=1),
]
"""One text or a non-empty list of texts, always read as a list."""


# -- errors and health ----------------------------------------------------------------------


def field_name(loc: Sequence[int | str]) -> str:
    """How errors name a field: `passages[0].text` for pydantic's ("passages", 0, "text")."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name or "body"


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready", "not_ready"]
    components: dict[str, Any]


class InfoResponse(BaseModel):
    """TEI-style `GET /info`: what the service serves and its limits."""

    model_id: str
    kind: str
    dimension: int | None
    max_input_tokens: int
    backend: str
    device: str
    max_items_per_request: int
    max_chars_per_item: int
    max_batch_size: int
    max_batch_tokens: int
    max_wait_ms: float
    max_queue_items: int

    def to_model_info(self) -> ModelInfo:
        return ModelInfo(
            model_id=self.model_id,
            kind=self.kind,
            dimension=self.dimension,
            max_tokens=self.max_input_tokens,
            backend=self.backend,
            device=self.device,
        )


# -- embeddings: OpenAI POST /v1/embeddings, with NVIDIA's input_type and truncate -----------


class EmbeddingsRequest(BaseModel):
    # OpenAI SDKs send fields we do not use (`user`); accept and ignore those.
    model_config = ConfigDict(extra="ignore")

    input: Texts = Field(description="One text or a list of texts.")
    model: str | None = Field(None, description="Informational; the service serves one model.")
    encoding_format: Literal["float", "base64"] = "float"
    input_type: InputType = Field(
        InputType.PASSAGE, description="NVIDIA: `query` or `passage` (asymmetric models)."
    )
    truncate: Truncate = Field(
        Truncate.NONE, description="NVIDIA: NONE refuses long inputs (422); START or END cut them."
    )
    dimensions: int | None = Field(
        None, ge=1, description="OpenAI: keep the first N dimensions (renormalized)."
    )
    normalize: bool = Field(True, description="semsearch/TEI extension: unit-length vectors.")

    def texts(self) -> list[str]:
        return list(self.input)


class TeiEmbedRequest(_Request):
    """TEI `POST /embed`."""

    inputs: Texts
    normalize: bool = True
    truncate: bool = Field(False, description="Cut long inputs instead of refusing them (422).")
    # huggingface_hub 1.x sends "Left"/"Right", 2.x "left"/"right"
    truncation_direction: Literal["Right", "Left", "right", "left"] = "Right"
    prompt_name: Literal["query", "passage"] | None = Field(
        None, description="TEI: which prompt to prepend; the service's query or passage prefix."
    )
    dimensions: int | None = Field(
        None, ge=1, description="Keep the first N dimensions (renormalized)."
    )

    def texts(self) -> list[str]:
        return list(self.inputs)

    def input_type(self) -> InputType:
        return InputType.QUERY if self.prompt_name == "query" else InputType.PASSAGE

    def truncate_mode(self) -> Truncate:
        if not self.truncate:
            return Truncate.NONE
        return Truncate.START if self.truncation_direction.lower() == "left" else Truncate.END


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage

    @classmethod
    def build(
        cls, vectors: FloatArray, model: str, prompt_tokens: int, encoding_format: str
    ) -> EmbeddingsResponse:
        data = [
            EmbeddingData(
                index=i,
                embedding=(
                    base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode()
                    if encoding_format == "base64"
                    else row.tolist()
                ),
            )
            for i, row in enumerate(vectors)
        ]
        return cls(
            data=data,
            model=model,
            usage=Usage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
        )

    def vectors(self) -> FloatArray:
        rows = sorted(self.data, key=lambda d: d.index)
        return np.stack([_decode_embedding(d.embedding) for d in rows]).astype(np.float32)


def _decode_embedding(value: list[float] | str) -> FloatArray:
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)


# -- reranking: NVIDIA POST /v1/ranking ----------------------------------------------------


class RankingText(_Request):
    text: Text


class RankingRequest(_Request):
    model: str | None = None
    query: RankingText
    passages: list[RankingText] = Field(min_length=1)
    truncate: Literal[Truncate.NONE, Truncate.END] = Truncate.NONE


class Ranking(BaseModel):
    index: int
    logit: float


class RankingResponse(BaseModel):
    rankings: list[Ranking]


# -- reranking: Cohere / TEI POST /rerank ----------------------------------------------------


class RerankDocument(_Request):
    text: Text


def _document(value: Any, handler: ValidatorFunctionWrapHandler) -> RerankDocument:
    # A plain string is checked here so its error names `documents[i]`, not a union member.
    if isinstance(value, str):
        return RerankDocument(text=_valid_text(value))
    document: RerankDocument = handler(value)
    return document


Document = Annotated[
    RerankDocument, WrapValidator(_document, json_schema_input_type=str | RerankDocument)
]


class RerankRequest(_Request):
    model: str | None = None
    query: Text = Field(min_length=1)
    documents: list[Document] = Field(min_length=1)
    top_n: int | None = Field(None, ge=1, description="Return only the best `top_n`.")
    return_documents: bool = False
    raw_scores: bool = Field(False, description="TEI: logits instead of sigmoid(logit).")
    truncate: bool = Field(False, description="TEI: cut long pairs at the end instead of 422.")

    def texts(self) -> list[str]:
        return [d.text for d in self.documents]


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


# -- search: ours, POST /v1/search -----------------------------------------------------------


class SearchRequest(_Request):
    query: Text = Field(
        description="What to search for.", examples=["What do microbes do in soil?"]
    )
    top_k: int | None = Field(None, ge=1, description="Results to return (default 10).")
    candidates: int | None = Field(
        None, ge=1, description="ANN candidates to consider before reranking (default 100)."
    )
    rerank: bool = Field(True, description="Rerank candidates with the cross-encoder.")
    collection: str | None = Field(
        None, min_length=1, description="Collection to search (default: `default`)."
    )
    timeout_ms: int | None = Field(
        None, ge=1, description="Deadline for this search (default 5000); 504 when it passes."
    )
    filter: dict[str, Any] | None = Field(
        None,
        description="Metadata filter: {field: value} for equality, {field: [values]} for any "
        "of them; all conditions must hold.",
        examples=[{"source": "scifact"}],
    )
    rerank_depth: int | None = Field(
        None, ge=1, description="How many of the candidates the cross-encoder scores."
    )
    rerank_weight: float | None = Field(
        None, ge=0, le=1, description="Blend of reranker and ANN scores (1: reranker only)."
    )

    @field_validator("query")
    @classmethod
    def _has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    def to_query(
        self,
        *,
        default_collection: str,
        default_top_k: int,
        default_candidates: int,
    ) -> SearchQuery:
        top_k = self.top_k or default_top_k
        candidates = self.candidates or max(default_candidates, top_k)
        return SearchQuery(
            query=self.query,
            collection=self.collection or default_collection,
            top_k=top_k,
            candidates=candidates,
            rerank=self.rerank,
            timeout_ms=self.timeout_ms,
            filter=self.filter,
            rerank_depth=self.rerank_depth,
            rerank_weight=self.rerank_weight,
        )


class SearchHit(BaseModel):
    id: str = Field(description="The indexed record: a document's id, or `doc#3` for a chunk.")
    document_id: str = Field(description="The source document (the id a chunk came from).")
    rank: int
    score: float = Field(
        description="What the order follows: when reranked, the blend of the reranker and ANN "
        "scores (z-scored per query; the reranker logit alone at rerank_weight 1), otherwise "
        "the ANN score."
    )
    ann_score: float = Field(description="Cosine similarity of query and passage.")
    rerank_score: float | None
    title: str
    text: str
    metadata: dict[str, Any]


class IndexInfo(BaseModel):
    backend: str
    collection: str
    generation: int


class ModelsUsed(BaseModel):
    embedder: str
    reranker: str | None


class SearchResponse(BaseModel):
    results: list[SearchHit]
    reranked: bool
    degraded: list[str]
    cached: bool
    index: IndexInfo
    models: ModelsUsed
    timings_ms: dict[str, float]
    request_id: str | None

    @classmethod
    def from_result(cls, result: SearchResult) -> SearchResponse:
        return cls(
            results=[
                SearchHit(
                    id=r.hit.id,
                    document_id=str(r.hit.metadata.get("parent_id", r.hit.id)),
                    rank=r.rank,
                    score=r.score,
                    ann_score=r.hit.score,
                    rerank_score=r.rerank_score,
                    title=r.hit.title,
                    text=r.hit.text,
                    metadata=r.hit.metadata,
                )
                for r in result.results
            ],
            reranked=result.reranked,
            degraded=result.degraded,
            cached=result.cached,
            index=IndexInfo(
                backend=result.index_backend,
                collection=result.collection,
                generation=result.generation,
            ),
            models=ModelsUsed(embedder=result.embedder_model, reranker=result.reranker_model),
            timings_ms=result.timings_ms,
            request_id=result.request_id,
        )
