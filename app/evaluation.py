"""Retrieval quality on BEIR-layout datasets: loading, and metrics from ir-measures.

The metrics come from a maintained library (ir-measures over pytrec_eval, the TREC reference
implementation), never from hand-written formulas.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import GatewaySettings
from app.errors import InvalidInput, SemsearchError
from app.types import Document, FloatArray, InputType, SearchQuery, Truncate

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
    import ir_measures

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


async def evaluate_search(
    config: EvalConfig,
    settings: GatewaySettings,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Index the corpus (reusing what is indexed), run the judged queries through the real
    search pipeline, and score dense-only, dense + rerank (at the configured weight and
    depth), a sweep of weight x depth, and ANN recall@10 against exact search."""
    from app.clients import embedder_for
    from app.index.registry import open_collection
    from app.indexing import index_documents
    from app.pipeline import SearchPipeline, rank_results

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
            "max_top_k": max(settings.max_top_k, 100),
            "default_collection": name,
        }
    )

    embedder = embedder_for(settings)
    await embedder.start()
    if not embedder.ready:
        raise SemsearchError(f"the embedder is not usable: {embedder.status}")
    index = await open_collection(
        settings, name, create=(embedder.info.model_id, embedder.info.dimension or 0)
    )
    chunker = None
    if config.chunk_tokens:
        from app.indexing import Chunker

        chunker = Chunker.for_model(embedder.info, config.chunk_tokens)
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

    pipeline = SearchPipeline.from_settings(settings)
    await pipeline.start()
    await pipeline.wait_ready(600)
    try:
        max_depth = max(config.depths)
        query_ids = list(dataset.queries)
        semaphore = asyncio.Semaphore(config.concurrency)
        done = 0

        async def run(query_id: str, rerank: bool) -> Any:
            nonlocal done
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
            done += 1
            if on_progress:
                on_progress("rerank" if rerank else "dense", 1, len(query_ids))
            return result

        dense = await asyncio.gather(*(run(q, False) for q in query_ids))
        report: dict[str, Any] = {
            "dataset": dataset.name,
            "split": config.split,
            "queries": len(query_ids),
            "documents": len(dataset.corpus),
            "collection": name,
            "embedder": pipeline.embedder.info.model_id,
            "reranker": None,
            "indexing": {
                "added": indexed.added,
                "unchanged": indexed.unchanged,
                "seconds": round(indexed.seconds, 1),
            },
            "dense": evaluate(_run_of(query_ids, dense), dataset.qrels),
            "ann_recall@10": await _ann_recall(
                pipeline, name, [dataset.queries[q] for q in query_ids]
            ),
        }
        if config.rerank and pipeline.reranker.ready:
            reranked = await asyncio.gather(*(run(q, True) for q in query_ids))
            report["reranker"] = pipeline.reranker.info.model_id
            sweep = []
            for depth in config.depths:
                for weight in config.weights:
                    rows = [_rerun(r, depth, weight, rank_results) for r in reranked]
                    sweep.append(
                        {
                            "depth": depth,
                            "weight": weight,
                            **evaluate(_run_of(query_ids, rows), dataset.qrels),
                        }
                    )
            report["sweep"] = sweep
            chosen = next(
                (
                    s
                    for s in sweep
                    if s["depth"] == min(settings.rerank_depth, max_depth)
                    and s["weight"] == settings.rerank_weight
                ),
                None,
            )
            report["dense_rerank"] = chosen
            report["best"] = max(sweep, key=lambda s: s["nDCG@10"])
        else:
            report["reranker_status"] = pipeline.reranker.status
        return report
    finally:
        await pipeline.stop()


def _rerun(result: Any, depth: int, weight: float, rank: Any) -> list[tuple[str, float]]:
    """The pipeline's own ranking at another depth and weight, from one reranked answer."""
    candidates = sorted(result.results, key=lambda r: -r.hit.score)  # back to ANN order
    scores = [float(r.rerank_score) for r in candidates[:depth] if r.rerank_score is not None]
    ranked = rank([r.hit for r in candidates], scores, 100, weight)
    return [(r.hit.id, r.score) for r in ranked]


def _run_of(query_ids: list[str], results: list[Any]) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for query_id, result in zip(query_ids, results, strict=True):
        pairs = (
            result if isinstance(result, list) else [(r.hit.id, r.score) for r in result.results]
        )
        scored: dict[str, float] = {}
        for position, (doc_id, _) in enumerate(pairs):
            parent = doc_id.split("#", 1)[0]  # chunks count for their document (best chunk)
            scored.setdefault(parent, float(len(pairs) - position))
        run[query_id] = scored
    return run


async def _ann_recall(pipeline: Any, collection: str, queries: list[str]) -> float | None:
    index = await pipeline.collections.get(collection)
    vectors = (await pipeline.embedder.embed(queries, InputType.QUERY, Truncate.END)).vectors
    return await ann_recall(getattr(index, "primary", index), vectors)


async def ann_recall(
    index: Any, vectors: FloatArray, k: int = 10, candidates: int = CANDIDATES
) -> float | None:
    """Share of the exact top-`k` that a real search returns in its top `k`: `index.search`
    with the evaluated searches' `candidates`, so whatever that path does (IVF-PQ's exact
    re-scoring, HNSW's ef) is measured. 1.0 for an exact index; None when the backend has
    no exact search to compare with."""
    if not hasattr(index, "exact_ids"):
        return None
    exact = await index.exact_ids(vectors, k)
    found = (await index.search(vectors, candidates)).hits
    overlaps = [
        len({hit.id for hit in hits[:k]} & set(ids)) / max(len(ids), 1)
        for hits, ids in zip(found, exact, strict=True)
    ]
    return sum(overlaps) / max(len(overlaps), 1)
