"""Search: ours, `POST /v1/search`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.protocol.common import NOT_BLANK, StrictRequest, Text
from app.types import FusionMethod, GroupBy, RankedHit, SearchMode, SearchQuery, SearchResult


class SearchRequest(StrictRequest):
    query: Text = Field(
        pattern=NOT_BLANK,
        description="What to search for; not blank.",
        examples=["What do microbes do in soil?"],
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
        None, ge=0, le=1, description="Blend of reranker and first-stage scores (1: reranker only)."
    )
    mode: SearchMode | None = Field(
        None,
        description="First stage: `hybrid` (BM25 and the dense model, fused), `dense` or "
        "`lexical` (default: the gateway's, hybrid).",
    )
    fusion: FusionMethod | None = Field(
        None,
        description="Hybrid only: `blend` (weighted z-scores) or `rrf` (weighted reciprocal "
        "rank fusion). Default: the gateway's, blend.",
    )
    fusion_weight: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Hybrid only: the lexical list's share (0: dense order, 1: BM25 order). "
        "Default: the weight calibrated for the collection.",
    )
    group_by: GroupBy | None = Field(
        None,
        description="`document` (default): one result per source document, its matching "
        "chunks listed under it, `top_k` counting documents; `chunk`: one per indexed chunk.",
    )
    offset: int = Field(
        0,
        ge=0,
        le=1000,
        description="Results to skip: pass the previous answer's `next_offset` for the next "
        "page. Pages come from one ranking per index generation: no repeats, no gaps.",
    )
    generation: int | None = Field(
        None,
        ge=0,
        description="For a next page: the `index.generation` of the previous one. An answer "
        "from another (newer) generation says so (`generation_changed`).",
    )
    min_score: float | None = Field(
        None, description="Drop results whose `score` is lower (a floor on what comes back)."
    )
    diversity: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Fewer near-duplicates (maximal marginal relevance): 0 off, 1 novelty "
        "weighs as much as the score.",
    )
    highlight_html: bool = Field(
        False, description="Also give each snippet as HTML, escaped, the matched words in <em>."
    )

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
            mode=self.mode,
            fusion_method=self.fusion.value if self.fusion else None,
            fusion_weight=self.fusion_weight,
            group_by=self.group_by,
            offset=self.offset,
            generation=self.generation,
            min_score=self.min_score,
            diversity=self.diversity,
            highlight_html=self.highlight_html,
        )


class ChunkHit(BaseModel):
    id: str = Field(description="The chunk's id (`doc#3`), or the document's when unchunked.")
    score: float
    rank: int = Field(description="Its rank among all the chunks ranked for this query.")


class SnippetOut(BaseModel):
    text: str = Field(description="The window of the passage that best shows the match.")
    start: int = Field(description="Where the window begins in `text` of the hit, in characters.")
    highlights: list[tuple[int, int]] = Field(
        description="The query's words in the window: [start, end) offsets in characters "
        "(Unicode code points, as Python indexes a string)."
    )
    html: str | None = Field(
        None, description="On request: the window as HTML, escaped, the words in <em>."
    )


class SearchHit(BaseModel):
    id: str = Field(
        description="The result: the source document's id (grouped by document), or the "
        "indexed chunk's (`doc#3`) with group_by chunk."
    )
    document_id: str = Field(description="The source document (the id a chunk came from).")
    rank: int
    score: float = Field(
        description="What the order follows: when reranked, the blend of the reranker and ANN "
        "scores (z-scored per query; the reranker logit alone at rerank_weight 1), otherwise "
        "the ANN score."
    )
    ann_score: float | None = Field(
        description="Cosine similarity of query and passage; null when the dense list did not "
        "find it."
    )
    lexical_score: float | None = Field(
        description="BM25 score of the passage for the query; null when the lexical list did "
        "not find it."
    )
    found_by: list[Literal["dense", "lexical"]] = Field(
        description="The first-stage lists that found it."
    )
    rerank_score: float | None
    title: str
    text: str = Field(description="The best chunk's text (the whole text when unchunked).")
    metadata: dict[str, Any]
    chunks: list[ChunkHit] = Field(
        description="The chunks of the document that were ranked, best first (with group_by "
        "chunk: the result itself)."
    )
    snippet: SnippetOut
    title_highlights: list[tuple[int, int]] = Field(
        description="The query's words in `title`, as character offsets."
    )


class IndexInfo(BaseModel):
    backend: str
    collection: str
    generation: int


class ModelsUsed(BaseModel):
    embedder: str
    reranker: str | None


class FusionUsed(BaseModel):
    method: FusionMethod
    weight: float = Field(description="The lexical list's share.")
    rrf_k: int


class SearchResponse(BaseModel):
    results: list[SearchHit]
    group_by: GroupBy
    offset: int
    next_offset: int | None = Field(
        description="`offset` of the next page; null when this is the last."
    )
    generation_changed: bool = Field(
        description="The `generation` asked for is not the one that answered: a newer one "
        "was published since the previous page; this page is from the new one."
    )
    mode: SearchMode = Field(
        description="What the first stage was: the mode asked for, or what was left of it "
        "(a hybrid search without a query vector is lexical, flagged degraded)."
    )
    fusion: FusionUsed | None = Field(description="How the two lists were fused (hybrid only).")
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
                    id=r.document_id if result.group_by is GroupBy.DOCUMENT else r.hit.id,
                    document_id=r.document_id,
                    rank=r.rank,
                    score=r.score,
                    ann_score=r.hit.dense_score,
                    lexical_score=r.hit.lexical_score,
                    found_by=r.hit.found_by,
                    rerank_score=r.rerank_score,
                    title=r.hit.title,
                    text=r.hit.text,
                    metadata=r.hit.metadata,
                    chunks=[ChunkHit(id=c.id, score=c.score, rank=c.rank) for c in r.chunks],
                    snippet=_snippet(r),
                    title_highlights=list(r.title_highlights),
                )
                for r in result.results
            ],
            group_by=result.group_by,
            offset=result.offset,
            next_offset=result.next_offset,
            generation_changed=result.generation_changed,
            mode=result.mode,
            fusion=FusionUsed.model_validate(result.fusion) if result.fusion else None,
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


def _snippet(result: RankedHit) -> SnippetOut:
    snip = result.snippet
    if snip is None:  # shaping always makes one; an empty window says nothing matched
        return SnippetOut(text="", start=0, highlights=[])
    return SnippetOut(
        text=snip.text, start=snip.start, highlights=list(snip.highlights), html=snip.html
    )
