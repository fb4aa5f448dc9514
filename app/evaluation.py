"""Retrieval quality on BEIR-layout datasets: loading, and metrics from ir-measures.

The metrics come from a maintained library (ir-measures over pytrec_eval, the TREC reference
implementation), never from hand-written formulas.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.config import EmbedderSettings, GatewaySettings, RerankerSettings
from app.errors import InvalidInput, SemsearchError
from app.extras import require
from app.index.vector import VectorIndex
from app.search.ranking import rank_results
from app.types import Document, FloatArray, InputType, SearchQuery, SearchResult, Truncate

if TYPE_CHECKING:
    from app.search.pipeline import SearchPipeline

DEFAULT_MEASURES = ("nDCG@10", "R@10", "R@100", "RR@10")
CANDIDATES = 100  # what every evaluated search fetches (and ranks, for R@100)
Run = Mapping[str, Mapping[str, float]]  # query id -> document id -> score (higher is better)


@dataclass(frozen=True)
class BeirDataset:
    name: str
    corpus: list[Document]
    queries: dict[str, str]  # only the queries judged in the chosen split
    qrels: dict[str, dict[str, int]]


def load_beir(folder: Path, split: str = "test") -> BeirDataset:
    """corpus.jsonl (`_id`, `title`, `text`), queries.jsonl (`_id`, `text`), qrels/<split>.tsv.
    `id` is accepted for `_id`, as `semsearch index` accepts both.

    Raises:
        SemsearchError: a file is missing.
        InvalidInput: a line lacks its id or text, or qrels lack a column (names the line).
    """
    paths = [folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"]
    for path in paths:
        if not path.is_file():
            raise SemsearchError(f"{path} is missing: expected the BEIR layout")
    corpus = [
        Document(doc_id, text, str(raw.get("title") or ""), {})
        for doc_id, text, raw in _records(paths[0])
    ]
    qrels = _qrels(paths[2])
    queries = {query_id: text for query_id, text, _ in _records(paths[1]) if query_id in qrels}
    return BeirDataset(folder.name, corpus, queries, qrels)


def _records(path: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(id, text, the whole record) per line of a BEIR JSONL file."""
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(raw, dict):
                raise InvalidInput(f"{where}: expected a JSON object")
            record_id = raw.get("_id", raw.get("id"))
            if not isinstance(record_id, str | int) or isinstance(record_id, bool):
                raise InvalidInput(f"{where}: no `_id` (or `id`) string or integer")
            if not isinstance(raw.get("text"), str):
                raise InvalidInput(f"{where}: `text` must be a string")
            yield str(record_id), raw["text"], raw


def _qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = {"query-id", "corpus-id", "score"} - set(reader.fieldnames or [])
        if missing:
            raise InvalidInput(f"{path.name}:1: no column {sorted(missing)[0]!r}")
        for row in reader:
            try:
                score = int(row["score"])
            except (TypeError, ValueError):
                raise InvalidInput(
                    f"{path.name}:{reader.line_num}: `score` must be an integer"
                ) from None
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = score
    return qrels


def evaluate(
    run: Run, qrels: Mapping[str, Mapping[str, int]], measures: Iterable[str] = DEFAULT_MEASURES
) -> dict[str, float]:
    """Mean of each measure over the judged queries (a query missing from `run` scores 0)."""
    ir_measures = require("ir_measures", "eval", "`semsearch eval`")
    parsed = [ir_measures.parse_measure(m) for m in measures]
    totals = {str(m): 0.0 for m in parsed}
    for metric in ir_measures.iter_calc(
        parsed,
        {q: dict(docs) for q, docs in qrels.items()},
        {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items()},
    ):
        totals[str(metric.measure)] += float(metric.value)
    # pytrec_eval skips queries absent from the run; they count as 0, not as missing
    return {name: total / max(len(qrels), 1) for name, total in totals.items()}


# -- evaluating the real search path ---------------------------------------------------------


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


Scores = dict[str, float]  # measure (nDCG@10, R@10, ...) -> mean over the judged queries


@dataclass(frozen=True)
class SweepPoint:
    """Quality of dense + rerank at one rerank depth and fusion weight."""

    depth: int
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
    ann_recall_at_10: float  # share of the exact top 10 that search returns
    reranker: str | None = None
    reranker_status: str | None = None  # why reranking was not evaluated
    sweep: list[SweepPoint] = field(default_factory=list)
    dense_rerank: SweepPoint | None = None  # at the configured depth and weight
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
            "ann_recall@10": self.ann_recall_at_10,
        }
        if self.reranker is not None:
            out["sweep"] = [point(p) for p in self.sweep]
            out["dense_rerank"] = point(self.dense_rerank)
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
    search pipeline, and score dense-only, dense + rerank (at the configured weight and
    depth), a sweep of weight x depth, and ANN recall@10 against exact search."""
    from app.assembly import build_pipeline, embedder_for
    from app.index.collections import open_collection
    from app.ingest.chunking import Chunker
    from app.ingest.indexer import index_documents

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
            "max_top_k": max(settings.max_top_k, 100),
            "default_collection": name,
        }
    )

    embedder = embedder_for(settings, models[0])
    await embedder.start()
    if not embedder.ready:
        raise SemsearchError(f"the embedder is not usable: {embedder.status}")
    index = await open_collection(
        settings, name, create=(embedder.info.model_id, embedder.info.dimension or 0)
    )
    chunker = Chunker.for_model(embedder.info, config.chunk_tokens) if config.chunk_tokens else None
    try:
        indexed = await index_documents(
            dataset.corpus,
            index,
            embedder,
            chunker=chunker,
            batch_size=settings.index_batch_size,
            on_batch=(lambda n: on_progress("index", n, len(dataset.corpus)))
            if on_progress
            else None,
        )
    finally:
        await index.close()
        await embedder.stop()

    pipeline = build_pipeline(settings, *models)
    await pipeline.start()
    await pipeline.wait_ready(600)
    try:
        max_depth = max(config.depths)
        query_ids = list(dataset.queries)
        semaphore = asyncio.Semaphore(config.concurrency)

        async def run(query_id: str, rerank: bool) -> SearchResult:
            async with semaphore:
                result = await pipeline.search(
                    SearchQuery(
                        query=dataset.queries[query_id],
                        collection=name,
                        top_k=CANDIDATES,
                        candidates=CANDIDATES,
                        rerank=rerank,
                        rerank_depth=max_depth,
                        rerank_weight=1.0,
                    )
                )
            if on_progress:
                on_progress("rerank" if rerank else "dense", 1, len(query_ids))
            return result

        dense = await asyncio.gather(*(run(q, False) for q in query_ids))
        report = EvalReport(
            dataset=dataset.name,
            split=config.split,
            queries=len(query_ids),
            documents=len(dataset.corpus),
            collection=name,
            embedder=pipeline.embedder.info.model_id,
            indexing=IndexingSummary(indexed.added, indexed.unchanged, round(indexed.seconds, 1)),
            dense=evaluate(_run_of(query_ids, [_pairs(r) for r in dense]), dataset.qrels),
            ann_recall_at_10=await _ann_recall(
                pipeline, name, [dataset.queries[q] for q in query_ids]
            ),
        )
        if not (config.rerank and pipeline.reranker.ready):
            report.reranker_status = pipeline.reranker.status
            return report
        reranked = await asyncio.gather(*(run(q, True) for q in query_ids))
        report.reranker = pipeline.reranker.info.model_id
        for depth in config.depths:
            for weight in config.weights:
                rows = [_rerun(r, depth, weight) for r in reranked]
                scores = evaluate(_run_of(query_ids, rows), dataset.qrels)
                report.sweep.append(SweepPoint(depth, weight, scores))
        chosen_depth = min(settings.rerank_depth, max_depth)
        report.dense_rerank = next(
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


def _pairs(result: SearchResult) -> list[tuple[str, float]]:
    return [(r.hit.id, r.score) for r in result.results]


def _rerun(result: SearchResult, depth: int, weight: float) -> list[tuple[str, float]]:
    """The pipeline's own ranking at another depth and weight, from one reranked answer."""
    candidates = sorted(result.results, key=lambda r: -r.hit.score)  # back to ANN order
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


async def _ann_recall(pipeline: SearchPipeline, collection: str, queries: list[str]) -> float:
    index = await pipeline.collections.get(collection)
    vectors = (await pipeline.embedder.embed(queries, InputType.QUERY, Truncate.END)).vectors
    return await ann_recall(index, vectors)


async def ann_recall(
    index: VectorIndex, vectors: FloatArray, k: int = 10, candidates: int = CANDIDATES
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
