"""The search path, written once against the protocols.

    admission (422 / 429) -> plan -> cache lookup -> first stage (retrieval.py) -> rerank top N
        -> rank -> documents (or chunks) -> diversity -> score floor -> cache store (only full
        answers) -> the page asked for, with snippets

Every search has one deadline; each stage spends from it. A stage that fails degrades the
answer instead of failing it: no reranker, first-stage order; primary index down, the fallback
index; no query vector, the lexical list alone (`degraded: ["embedder"]`); lexical index
failing, the dense list alone (`degraded: ["lexical"]`). No answer can be made only without an
index, or without a query vector in a collection that has no lexical index (503). Out of time
before an answer exists: 504.

What is cached is the whole shaped ranking, not a page: the next page comes from the same
ranking, so pages of one generation have no repeats and no gaps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from dataclasses import dataclass

from app import metrics
from app.admission import AdaptiveLimit
from app.errors import (
    CircuitOpen,
    DeadlineExceeded,
    EmbedderUnavailable,
    InvalidInput,
    Overloaded,
    SemsearchError,
)
from app.index.base import Collection
from app.index.collections import Collections
from app.logs import current_request_id, get_logger
from app.models import Embedder, Reranker, readiness
from app.resilience import Deadline, request_arrival
from app.search import shaping
from app.search.cache import SafeCache, cache_key, decode_result, encode_result
from app.search.config import Guards, PipelineConfig
from app.search.fusion import choose
from app.search.query import check_query
from app.search.ranking import rank_results
from app.search.retrieval import FirstStage, Retriever, Search, stage
from app.types import (
    Fusion,
    FusionMethod,
    GroupBy,
    Hit,
    SearchMode,
    SearchQuery,
    SearchResult,
    Truncate,
)

log = get_logger(__name__)

# Time kept back from every search's deadline for building and sending the answer.
RESPONSE_MARGIN_S = 0.05
# Grouped by document, a fetch that filled fewer documents than a page is repeated this many
# times larger (up to max_candidates): a few long documents can fill the candidates.
EXPAND = 4


@dataclass(frozen=True)
class Plan:
    """What one search will do, settled before the cache is asked."""

    mode: SearchMode  # the first stage, given what the collection has
    fusion: Fusion | None  # hybrid only
    depth: int  # candidates the reranker scores
    weight: float  # the reranker's share of the final score
    group_by: GroupBy


class SearchPipeline:
    """Answers `SearchQuery`s. Holds no per-request state; safe to share across requests."""

    def __init__(
        self,
        *,
        embedder: Embedder,
        reranker: Reranker,
        collections: Collections,
        cache: SafeCache,
        config: PipelineConfig,
        guards: Guards,
        default_collection: str,
    ) -> None:
        self.retriever = Retriever(embedder, guards)
        self.reranker = reranker
        self.collections = collections
        self.cache = cache
        self.config = config
        self.guards = guards
        self.default_collection = default_collection
        self.admission = AdaptiveLimit(config.admission)
        self._loading: list[asyncio.Task[None]] = []

    @property
    def embedder(self) -> Embedder:
        return self.retriever.embedder

    @embedder.setter
    def embedder(self, embedder: Embedder) -> None:
        self.retriever.embedder = embedder

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the collections; load or connect the models in the background.

        The reranker may take long to load (or fail, e.g. offline with a hub id): searches are
        answered in first-stage order meanwhile, flagged `degraded: ["reranker"]`.
        """
        await self.collections.start()
        self._loading = [
            asyncio.create_task(self.embedder.start()),
            asyncio.create_task(self.reranker.start()),
        ]

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until the models finished loading (successfully or not)."""
        await asyncio.wait_for(asyncio.gather(*self._loading), timeout_s)

    async def refresh(self) -> None:
        """Periodic upkeep: pick up newly published generations."""
        await self.collections.reload()

    async def stop(self) -> None:
        for task in self._loading:
            task.cancel()
        await self.guards.stop()
        await self.embedder.stop()
        await self.reranker.stop()
        await self.collections.close()
        await self.cache.close()

    def status(self) -> tuple[bool, dict[str, object]]:
        """(ready, components) for /ready: ready once the default collection is open and can
        be searched, with a query vector or, while there is none, with its lexical index; the
        reranker and the cache only degrade answers."""
        collections = self.collections.status()
        default = collections.get(self.default_collection)
        ready = default is not None and (self.embedder.ready or bool(default.get("lexical")))
        return ready, {
            "embedder": readiness(self.embedder),
            "reranker": readiness(self.reranker),
            "cache": self.cache.backend,
            "collections": collections,
            "default_collection": self.default_collection,
            "circuits": {
                guard.name: guard.breaker.state.name.lower()
                for guard in (
                    self.guards.embed,
                    self.guards.index,
                    self.guards.lexical,
                    self.guards.rerank,
                )
            },
            "inflight": self.admission.inflight,
            "admission_limit": self.admission.limit,
        }

    def unhealthy(self) -> str | None:
        """Why the process should be restarted (an in-process model keeps failing), or None."""
        for model in (self.embedder, self.reranker):
            if not model.healthy:
                return f"{model.info.kind} model: {model.status}"
        return None

    # -- the search path ------------------------------------------------------------------

    async def search(self, query: SearchQuery) -> SearchResult:
        """Run one search.

        Raises:
            InvalidInput: a value is out of range (422) -- before any work.
            Overloaded: over the adaptive admission limit (429) -- before any work; or a
                dependency refused the search as too busy (429).
            NotFound: the collection does not exist (404).
            EmbedderUnavailable / IndexUnavailable: no answer can be made (503).
            DeadlineExceeded: the deadline passed before an answer existed (504).
        """
        query = check_query(query, self.config.limits)
        budget_s = (query.timeout_ms or self.config.timeout_ms) / 1000
        ticket = self.admission.admit(budget_s)
        # The stages stop a little before the client's deadline, so that an answer cut
        # short (reranking abandoned) is still written back within it.
        margin_s = min(RESPONSE_MARGIN_S, budget_s / 5)
        deadline = Deadline(budget_s - margin_s, started_at=request_arrival.get())
        try:
            result = await self._search(query, deadline)
        except SemsearchError as exc:
            # Refused downstream or out of time: cut the limit. Other errors are answers too:
            # how long they took is the signal.
            shed = isinstance(exc, Overloaded | DeadlineExceeded)
            self.admission.done(ticket, time.monotonic() - deadline.started_at, shed)
            metrics.SEARCHES.labels(exc.type).inc()
            raise
        except BaseException:
            self.admission.done(ticket, None)
            raise
        # Reranking has its own budget and is skipped first under load: not counted here.
        reranking_s = result.timings_ms.get("rerank", 0.0) / 1000
        self.admission.done(ticket, time.monotonic() - deadline.started_at - reranking_s)
        return result

    async def _search(self, query: SearchQuery, deadline: Deadline) -> SearchResult:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        index = await self.collections.get(query.collection, deadline.remaining())
        plan = self._plan(query, index)
        reranker_model = self.reranker.info.model_id if query.rerank else None
        key = cache_key(
            collection=query.collection,
            collection_uid=index.uid,
            generation=index.generation,
            embedder_model=self.embedder.info.model_id,
            reranker_model=reranker_model,
            query=query.query,
            top_k=query.top_k,
            candidates=query.candidates,
            rerank_depth=plan.depth,
            rerank_weight=plan.weight,
            filter=query.filter,
            mode=plan.mode.value,
            fusion=plan.fusion.key() if plan.fusion else None,
            shape={
                "group_by": plan.group_by.value,
                "diversity": query.diversity,
                "min_score": query.min_score,
            },
        )

        with stage(timings, "cache"):
            cached = await self.cache.get(key)
        if cached is not None:
            metrics.SEARCHES.labels("cached").inc()
            ranking = decode_result(cached)
            ranking.cached = True
            return self._page(ranking, query, timings, started)

        degraded: list[str] = []
        search = Search(
            query.query, index, plan.mode, plan.fusion, query.filter, deadline, timings, degraded
        )
        first = await self._first_stage(search, query, plan)
        hits = first.hits
        scores: list[float] | None = None
        if query.rerank and hits:
            with stage(timings, "rerank"):
                scores = await self._rerank(query.query, hits[: plan.depth], deadline)
            if scores is None:
                degraded.append("reranker")

        ranked = rank_results(hits, scores, len(hits), plan.weight)
        shaped = (
            shaping.by_document(ranked)
            if plan.group_by is GroupBy.DOCUMENT
            else shaping.by_chunk(ranked)
        )
        shaped = shaping.diversify(shaped, query.diversity, keep=shaping.DIVERSIFY_AT_MOST)
        ranking = SearchResult(
            results=shaping.at_least(shaped, query.min_score),
            reranked=scores is not None,
            degraded=degraded,
            cached=False,
            collection=query.collection,
            index_backend=first.backend,
            generation=first.generation,
            embedder_model=self.embedder.info.model_id,
            reranker_model=reranker_model if scores is not None else None,
            timings_ms={},
            request_id=None,
            mode=first.mode,
            fusion=plan.fusion.key() if first.mode is SearchMode.HYBRID and plan.fusion else None,
            group_by=plan.group_by,
        )
        if not degraded:
            self.cache.write_later(key, self._store(key, ranking))
        for skipped in degraded:
            metrics.SEARCH_DEGRADED.labels(skipped).inc()
        metrics.SEARCHES.labels("degraded" if degraded else "full").inc()
        metrics.SEARCH_MODES.labels(first.mode.value).inc()
        return self._page(ranking, query, timings, started)

    async def _store(self, key: str, ranking: SearchResult) -> bytes | None:
        """The whole ranking into the cache, after the answer left (`SafeCache.write_later`):
        for a lone SciFact search, encoding its 79 KiB took 0.15-0.45 ms and Redis's SET 0.57
        ms on the same host."""
        with stage({}, "cache_store"):
            payload = encode_result(ranking)
            if payload is not None:
                await self.cache.set(key, payload, self.config.cache_ttl_s)
        return payload

    def _plan(self, query: SearchQuery, index: Collection) -> Plan:
        mode = query.mode or self.config.mode
        if mode is SearchMode.LEXICAL and not index.has_lexical:
            raise InvalidInput(
                f"collection {index.collection!r} has no lexical index (it was indexed before "
                f"lexical search existed): run `semsearch rebuild --collection "
                f"{index.collection}`, or search with mode dense",
                field="mode",
            )
        if mode is SearchMode.HYBRID and not index.has_lexical:
            mode = SearchMode.DENSE  # the collection has one list only; nothing failed
        wrong_model = self.embedder.ready and self.embedder.info.model_id != index.model_id
        if mode is not SearchMode.LEXICAL and wrong_model:
            # a misconfigured gateway, not a failing embedder: say so, do not degrade
            raise EmbedderUnavailable(
                f"collection {index.collection!r} was indexed with {index.model_id!r} but the "
                f"embedder serves {self.embedder.info.model_id!r}; re-index the collection or "
                "set SEMSEARCH_EMBEDDER_MODEL to the model it was built with"
            )
        fusion = None
        if mode is SearchMode.HYBRID:
            fusion = choose(
                FusionMethod(query.fusion_method or self.config.fusion_method),
                self.config.fusion_weight if query.fusion_weight is None else query.fusion_weight,
                index.calibration,
            )
        return Plan(
            mode=mode,
            fusion=fusion,
            depth=min(query.rerank_depth or self.config.rerank_depth, query.candidates),
            weight=self.config.rerank_weight
            if query.rerank_weight is None
            else query.rerank_weight,
            group_by=query.group_by or self.config.group_by,
        )

    async def _first_stage(self, search: Search, query: SearchQuery, plan: Plan) -> FirstStage:
        """`candidates` chunks; grouped by document, while that fills fewer documents than a
        page and the lists had more, EXPAND times as many (up to max_candidates): a few long
        documents can fill the candidates. The fetch depends on the query and `top_k` only,
        never on `offset`: every page is cut from the same ranking."""
        k = query.candidates
        first = await self.retriever.candidates(search, k)
        while (
            plan.group_by is GroupBy.DOCUMENT
            and first.saturated
            and k < self.config.limits.max_candidates
            and len({_document(h) for h in first.hits}) < query.top_k
        ):
            k = min(self.config.limits.max_candidates, k * EXPAND)
            first = await self.retriever.candidates(search, k, first.vector)
        return first

    def _page(
        self, ranking: SearchResult, query: SearchQuery, timings: dict[str, float], started: float
    ) -> SearchResult:
        """The page `query` asks for, from the whole ranking, with snippets."""
        items, next_offset = shaping.page(ranking.results, query.offset, query.top_k)
        items = shaping.with_snippets(
            items, query.query, self.config.snippet_chars, query.highlight_html
        )
        changed = query.generation is not None and query.generation != ranking.generation
        elapsed = time.perf_counter() - started
        metrics.SEARCH_STAGE_LATENCY.labels("total").observe(elapsed)
        return dataclasses.replace(
            ranking,
            results=items,
            offset=query.offset,
            next_offset=next_offset,
            generation_changed=changed,
            request_id=current_request_id(),
            timings_ms={**timings, "total": round(elapsed * 1000, 3)},
        )

    async def _rerank(self, text: str, hits: list[Hit], deadline: Deadline) -> list[float] | None:
        """Scores, or None when reranking was skipped: the answer is then in first-stage order.

        Reranking is what a search can do without: while other searches are in progress it
        gets only part of the deadline, and the reranker service hears how long that leaves
        and refuses at once (429) when its queue would make it later, so under load searches
        degrade before any is refused. A search alone may spend its whole deadline on it."""
        if self.admission.inflight > 1:
            deadline = deadline.portion(self.config.rerank_budget_fraction)
        if deadline.remaining() * 1000 < self.config.min_rerank_budget_ms:
            metrics.RERANK_SKIPPED.labels("budget").inc()
            log.debug("rerank_skipped", reason="budget", remaining_ms=deadline.remaining() * 1000)
            return None
        try:
            scores = await self.guards.rerank.run(
                lambda: self.reranker.score(text, [h.passage for h in hits], Truncate.END),
                deadline,
            )
        except Exception as exc:
            cause = _skip_reason(exc)
            metrics.RERANK_SKIPPED.labels(cause).inc()
            reason = exc.message if isinstance(exc, SemsearchError) else repr(exc)
            # Busy, slow or known to be down (model_load_failed, the breaker opening) was
            # reported already or is expected under load; a failure of a working one is news.
            news = cause == "error" and self.reranker.ready
            (log.warning if news else log.debug)("rerank_skipped", reason=reason)
            return None
        if not all(math.isfinite(score) for score in scores):
            # an overflowing half-precision model, a broken export: no order can be made of it
            metrics.RERANK_SKIPPED.labels("not_finite").inc()
            log.warning("rerank_skipped", reason="the reranker returned non-finite scores")
            return None
        return scores


def _document(hit: Hit) -> str:
    return str(hit.metadata.get("parent_id", hit.id))


def _skip_reason(error: Exception) -> str:
    if isinstance(error, Overloaded):
        return "busy"
    if isinstance(error, CircuitOpen):
        return "circuit_open"
    if isinstance(error, DeadlineExceeded):
        return "timeout"
    return "error"
