"""`semsearch eval`: quality through the real search path on a BEIR dataset.

The corpus is indexed as `semsearch index` would (its fusion weight calibrated on it, with no
judgments), the judged queries are searched dense-only, lexical-only, hybrid (the gateway's
defaults) and hybrid + rerank, and scored. Sweeps are computed from those answers without
searching again: the fusion method and weight from the dense and lexical lists, the rerank
depth and weight from the reranked hybrid answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.config import EmbedderSettings, GatewaySettings, RerankerSettings
from app.errors import SemsearchError
from app.evaluation.beir import Run, evaluate, load_beir
from app.index.base import Collection
from app.search.fusion import fuse
from app.search.ranking import rank_results
from app.types import (
    Calibration,
    FloatArray,
    Fusion,
    FusionMethod,
    Hit,
    InputType,
    SearchMode,
    SearchQuery,
    SearchResult,
    Truncate,
)

if TYPE_CHECKING:
    from app.search.pipeline import SearchPipeline

CANDIDATES = 100  # what every evaluated search fetches (and ranks, for R@100)
FUSION_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))

Scores = dict[str, float]  # measure (nDCG@10, R@10, ...) -> mean over the judged queries


@dataclass
class EvalConfig:
    dataset: Path
    split: str = "test"
    collection: str | None = None
    depths: tuple[int, ...] = (10, 20, 30)
    weights: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    concurrency: int = 8
    rerank: bool = True
    chunk_tokens: int | None = None  # None: BEIR's convention, passages cut at the window


@dataclass(frozen=True)
class SweepPoint:
    """Quality of hybrid + rerank at one rerank depth and rerank weight."""

    depth: int
    weight: float
    scores: Scores


@dataclass(frozen=True)
class FusionPoint:
    """Quality of the hybrid first stage at one fusion method and lexical weight."""

    method: str
    weight: float
    scores: Scores


@dataclass(frozen=True)
class IndexingSummary:
    added: int
    unchanged: int
    seconds: float


@dataclass
class EvalReport:
    """What `semsearch eval` measured; `to_json()` is the report file's shape."""

    dataset: str
    split: str
    queries: int
    documents: int
    collection: str
    embedder: str
    indexing: IndexingSummary
    dense: Scores
    lexical: Scores
    hybrid: Scores  # the gateway's defaults: the collection's calibrated blend
    calibration: Calibration | None
    ann_recall_at_10: float  # share of the exact top 10 that search returns
    fusion_sweep: list[FusionPoint] = field(default_factory=list)
    reranker: str | None = None
    reranker_status: str | None = None  # why reranking was not evaluated
    sweep: list[SweepPoint] = field(default_factory=list)
    hybrid_rerank: SweepPoint | None = None  # at the configured depth and weight
    best: SweepPoint | None = None

    def to_json(self) -> dict[str, Any]:
        def point(p: SweepPoint | None) -> dict[str, Any] | None:
            return None if p is None else {"depth": p.depth, "weight": p.weight, **p.scores}

        out: dict[str, Any] = {
            "dataset": self.dataset,
            "split": self.split,
            "queries": self.queries,
            "documents": self.documents,
            "collection": self.collection,
            "embedder": self.embedder,
            "reranker": self.reranker,
            "indexing": asdict(self.indexing),
            "dense": self.dense,
            "lexical": self.lexical,
            "hybrid": self.hybrid,
            "calibration": asdict(self.calibration) if self.calibration else None,
            "fusion_sweep": [
                {"method": p.method, "weight": p.weight, **p.scores} for p in self.fusion_sweep
            ],
            "ann_recall@10": self.ann_recall_at_10,
        }
        if self.reranker is not None:
            out["sweep"] = [point(p) for p in self.sweep]
            out["hybrid_rerank"] = point(self.hybrid_rerank)
            out["best"] = point(self.best)
        else:
            out["reranker_status"] = self.reranker_status
        return out


async def evaluate_search(
    config: EvalConfig,
    settings: GatewaySettings,
    models: tuple[EmbedderSettings, RerankerSettings],
    on_progress: Callable[[str, int, int], None] | None = None,
) -> EvalReport:
    """Index the corpus (reusing what is indexed), run the judged queries through the real
    search pipeline, and score each mode, the fusion and rerank sweeps, and ANN recall@10
    against exact search."""
    from app.assembly import build_pipeline

    dataset = load_beir(config.dataset, config.split)
    suffix = f"-chunk{config.chunk_tokens}" if config.chunk_tokens else ""
    name = config.collection or f"eval-{dataset.name}{suffix}"
    # generous budgets: an evaluation measures quality, not latency
    settings = settings.model_copy(
        update={
            "search_timeout_ms": settings.max_timeout_ms,
            "rerank_timeout_ms": settings.max_timeout_ms,
            "embed_timeout_ms": settings.max_timeout_ms,
            "max_inflight_searches": 1024,
            "rerank_budget_fraction": 1.0,
            "admission_target_fraction": 1.0,
            "max_top_k": max(settings.max_top_k, CANDIDATES),
            "default_collection": name,
        }
    )
    indexed = await _index(dataset.corpus, name, config, settings, models[0], on_progress)

    pipeline = build_pipeline(settings, *models)
    await pipeline.start()
    await pipeline.wait_ready(600)
    try:
        query_ids = list(dataset.queries)

        async def run(mode: SearchMode, rerank: bool = False) -> list[SearchResult]:
            # the reranker computes one batch at a time: more searches at once would only
            # wait longer in its queue, some past even an evaluation's deadline
            semaphore = asyncio.Semaphore(2 if rerank else config.concurrency)

            async def one(query_id: str) -> SearchResult:
                async with semaphore:
                    result = await pipeline.search(
                        SearchQuery(
                            query=dataset.queries[query_id],
                            collection=name,
                            top_k=CANDIDATES,
                            candidates=CANDIDATES,
                            rerank=rerank,
                            rerank_depth=max(config.depths),
                            rerank_weight=1.0,
                            mode=mode,
                        )
                    )
                if on_progress:
                    stage = f"{mode.value} + rerank" if rerank else mode.value
                    on_progress(stage, 1, len(query_ids))
                return result

            return await asyncio.gather(*(one(q) for q in query_ids))

        def score(rows: list[list[tuple[str, float]]]) -> Scores:
            return evaluate(_run_of(query_ids, rows), dataset.qrels)

        dense = await run(SearchMode.DENSE)
        lexical = await run(SearchMode.LEXICAL)
        hybrid = await run(SearchMode.HYBRID)
        index = await pipeline.collections.get(name)
        report = EvalReport(
            dataset=dataset.name,
            split=config.split,
            queries=len(query_ids),
            documents=len(dataset.corpus),
            collection=name,
            embedder=pipeline.embedder.info.model_id,
            indexing=IndexingSummary(indexed.added, indexed.unchanged, round(indexed.seconds, 1)),
            dense=score([_pairs(r) for r in dense]),
            lexical=score([_pairs(r) for r in lexical]),
            hybrid=score([_pairs(r) for r in hybrid]),
            calibration=index.calibration,
            ann_recall_at_10=await _ann_recall(
                pipeline, index, [dataset.queries[q] for q in query_ids]
            ),
        )
        for method in FusionMethod:
            for weight in FUSION_WEIGHTS:
                fusion = Fusion(method, weight)
                rows = [
                    _ranked(fuse(_hits(d), _hits(w), fusion))
                    for d, w in zip(dense, lexical, strict=True)
                ]
                report.fusion_sweep.append(FusionPoint(method.value, weight, score(rows)))
        if not (config.rerank and pipeline.reranker.ready):
            report.reranker_status = pipeline.reranker.status
            return report
        reranked = await run(SearchMode.HYBRID, rerank=True)
        report.reranker = pipeline.reranker.info.model_id
        for depth in config.depths:
            for weight in config.weights:
                rows = [_rerun(r, depth, weight) for r in reranked]
                report.sweep.append(SweepPoint(depth, weight, score(rows)))
        chosen_depth = min(settings.rerank_depth, max(config.depths))
        report.hybrid_rerank = next(
            (
                p
                for p in report.sweep
                if p.depth == chosen_depth and p.weight == settings.rerank_weight
            ),
            None,
        )
        report.best = max(report.sweep, key=lambda p: p.scores["nDCG@10"])
        return report
    finally:
        await pipeline.stop()


async def _index(
    corpus: list[Any],
    name: str,
    config: EvalConfig,
    settings: GatewaySettings,
    model: EmbedderSettings,
    on_progress: Callable[[str, int, int], None] | None,
) -> Any:
    """The corpus into collection `name`, as `semsearch index` does it (reused when there)."""
    from app.assembly import embedder_for
    from app.index.collections import open_collection
    from app.ingest.chunking import Chunker
    from app.ingest.indexer import index_documents

    embedder = embedder_for(settings, model)
    await embedder.start()
    if not embedder.ready:
        raise SemsearchError(f"the embedder is not usable: {embedder.status}")
    index = await open_collection(
        settings, name, create=(embedder.info.model_id, embedder.info.dimension or 0)
    )
    chunker = Chunker.for_model(embedder.info, config.chunk_tokens) if config.chunk_tokens else None
    try:
        return await index_documents(
            corpus,
            index,
            embedder,
            chunker=chunker,
            batch_size=settings.index_batch_size,
            on_batch=(lambda n: on_progress("index", n, len(corpus))) if on_progress else None,
        )
    finally:
        await index.close()
        await embedder.stop()


def _hits(result: SearchResult) -> list[Hit]:
    """One list's hits, in its order, with its own scores (a one-list answer is not fused)."""
    return [r.hit for r in sorted(result.results, key=lambda r: r.rank)]


def _pairs(result: SearchResult) -> list[tuple[str, float]]:
    return [(r.hit.id, r.score) for r in result.results]


def _ranked(hits: list[Hit]) -> list[tuple[str, float]]:
    return [(h.id, h.score) for h in hits[:CANDIDATES]]


def _rerun(result: SearchResult, depth: int, weight: float) -> list[tuple[str, float]]:
    """The pipeline's own ranking at another depth and weight, from one reranked answer."""
    candidates = sorted(result.results, key=lambda r: -r.hit.score)  # first-stage order
    scores = [float(r.rerank_score) for r in candidates[:depth] if r.rerank_score is not None]
    ranked = rank_results([r.hit for r in candidates], scores, CANDIDATES, weight)
    return [(r.hit.id, r.score) for r in ranked]


def _run_of(query_ids: list[str], results: list[list[tuple[str, float]]]) -> Run:
    """Ranked (record id, score) lists as a run of documents: a chunk counts for its
    document, at the rank of its best chunk."""
    run: dict[str, dict[str, float]] = {}
    for query_id, pairs in zip(query_ids, results, strict=True):
        scored: dict[str, float] = {}
        for position, (doc_id, _) in enumerate(pairs):
            parent = doc_id.split("#", 1)[0]
            scored.setdefault(parent, float(len(pairs) - position))
        run[query_id] = scored
    return run


async def _ann_recall(pipeline: SearchPipeline, index: Collection, queries: list[str]) -> float:
    vectors = (await pipeline.embedder.embed(queries, InputType.QUERY, Truncate.END)).vectors
    return await ann_recall(index, vectors)


async def ann_recall(
    index: Collection, vectors: FloatArray, k: int = 10, candidates: int = CANDIDATES
) -> float:
    """Share of the exact top-`k` that a real search returns in its top `k`: `index.search`
    with the evaluated searches' `candidates`, so whatever that path does (IVF-PQ's exact
    re-scoring, HNSW's ef) is measured. 1.0 for an exact index."""
    exact = await index.exact_ids(vectors, k)
    found = (await index.search(vectors, candidates)).hits
    overlaps = [
        len({hit.id for hit in hits[:k]} & set(ids)) / max(len(ids), 1)
        for hits, ids in zip(found, exact, strict=True)
    ]
    return sum(overlaps) / max(len(overlaps), 1)
