"""The search path, written once against the protocols.

    admission (422 / 429) -> cache lookup -> first stage -> rerank top N -> top_k
        -> cache store (only full answers)

    first stage: lexical (BM25) ----------------------------\
                 embed query -> dense ANN ------------------ fuse (hybrid) or one list

Every search has one deadline; each stage spends from it. A stage that fails degrades the
answer instead of failing it: no reranker, first-stage order; primary index down, the fallback
index; no query vector, the lexical list alone (`degraded: ["embedder"]`); lexical index
failing, the dense list alone (`degraded: ["lexical"]`). No answer can be made only without an
index, or without a query vector in a collection that has no lexical index (503). Out of time
before an answer exists: 504.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from app import metrics
from app.config import GatewaySettings
from app.errors import (
    CircuitOpen,
    DeadlineExceeded,
    EmbedderUnavailable,
    IndexUnavailable,
    InputTooLong,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    SemsearchError,
)
from app.index.base import AnnResult, Collection
from app.index.collections import Collections
from app.logs import current_request_id, get_logger
from app.models import Embedder, Reranker
from app.resilience import (
    BreakerPolicy,
    Bulkhead,
    CircuitBreaker,
    Deadline,
    RetryPolicy,
    StageGuard,
    request_arrival,
)
from app.search.cache import ResultCache, cache_key, decode_result, encode_result
from app.search.fusion import choose, fuse, single
from app.search.query import QueryLimits, check_query
from app.search.ranking import rank_results
from app.types import (
    Filter,
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

log = get_logger(__name__)

# Time kept back from every search's deadline for building and sending the answer.
RESPONSE_MARGIN_S = 0.05


@dataclass(frozen=True)
class PipelineConfig:
    """The search path's defaults and limits (from the gateway's settings)."""

    limits: QueryLimits
    rerank_depth: int
    rerank_weight: float
    cache_ttl_s: int
    timeout_ms: int
    min_rerank_budget_ms: int
    max_inflight: int
    mode: SearchMode
    fusion_method: FusionMethod
    fusion_weight: float | None  # None: each collection's calibrated weight

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> PipelineConfig:
        return cls(
            limits=QueryLimits.from_settings(settings),
            rerank_depth=settings.rerank_depth,
            rerank_weight=settings.rerank_weight,
            cache_ttl_s=settings.cache_ttl_s,
            timeout_ms=settings.search_timeout_ms,
            min_rerank_budget_ms=settings.min_rerank_budget_ms,
            max_inflight=settings.max_inflight_searches,
            mode=SearchMode(settings.search_mode),
            fusion_method=FusionMethod(settings.fusion_method),
            fusion_weight=settings.fusion_weight,
        )


@dataclass(frozen=True)
class Plan:
    """What one search will do, settled before the cache is asked."""

    mode: SearchMode  # the first stage, given what the collection has
    fusion: Fusion | None  # hybrid only
    depth: int  # candidates the reranker scores
    weight: float  # the reranker's share of the final score


@dataclass
class Guards:
    """Breaker, bulkhead, per-try timeout and retries for each dependency of a search."""

    embed: StageGuard
    index: StageGuard
    lexical: StageGuard
    rerank: StageGuard

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Guards:
        policy = BreakerPolicy.from_settings(settings)
        retry = RetryPolicy.from_settings(settings)
        return cls(
            embed=_guard(
                "embedder", policy, settings.embedder_concurrency, settings.embed_timeout_ms, retry
            ),
            index=_guard(
                "index", policy, settings.max_inflight_searches, settings.index_timeout_ms, retry
            ),
            # its own breaker: a failing lexical index must not stop dense searches
            lexical=_guard(
                "lexical", policy, settings.max_inflight_searches, settings.index_timeout_ms, retry
            ),
            rerank=_guard(
                "reranker",
                policy,
                settings.reranker_concurrency,
                settings.rerank_timeout_ms,
                RetryPolicy(attempts=1, base_delay_s=0.0),
            ),
        )


def _guard(
    name: str, policy: BreakerPolicy, limit: int, timeout_ms: int, retry: RetryPolicy
) -> StageGuard:
    return StageGuard(
        name, CircuitBreaker(name, policy), Bulkhead(name, limit), timeout_ms / 1000, retry
    )


class SearchPipeline:
    """Answers `SearchQuery`s. Holds no per-request state; safe to share across requests."""

    def __init__(
        self,
        *,
        embedder: Embedder,
        reranker: Reranker,
        collections: Collections,
        cache: ResultCache,
        config: PipelineConfig,
        guards: Guards,
        default_collection: str,
    ) -> None:
        self.embedder = embedder
        self.reranker = reranker
        self.collections = collections
        self.cache = cache
        self.config = config
        self.guards = guards
        self.default_collection = default_collection
        self._inflight = 0
        self._loading: list[asyncio.Task[None]] = []

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the collections; load or connect the models in the background.

        The reranker may take long to load (or fail, e.g. offline with a hub id): searches are
        answered in ANN order meanwhile, flagged `degraded: ["reranker"]`.
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
        await self.embedder.stop()
        await self.reranker.stop()
        await self.collections.close()
        await self.cache.close()

    def status(self) -> tuple[bool, dict[str, object]]:
        """(ready, components) for /ready: ready once the query embedder and the default
        collection can serve; the reranker and the cache only degrade answers."""
        collections = self.collections.status()
        ready = self.embedder.ready and self.default_collection in collections
        return ready, {
            "embedder": {"model": self.embedder.info.model_id, "status": self.embedder.status},
            "reranker": {"model": self.reranker.info.model_id, "status": self.reranker.status},
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
            "inflight": self._inflight,
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
            Overloaded: too many searches in progress (429) -- before any work.
            NotFound: the collection does not exist (404).
            EmbedderUnavailable / IndexUnavailable: no answer can be made (503).
            DeadlineExceeded: the deadline passed before an answer existed (504).
        """
        query = check_query(query, self.config.limits)
        if self._inflight >= self.config.max_inflight:
            metrics.SHED_REQUESTS.labels("inflight").inc()
            raise Overloaded(f"{self._inflight} searches in progress", retry_after_s=1.0)
        self._inflight += 1
        try:
            budget_s = (query.timeout_ms or self.config.timeout_ms) / 1000
            # The stages stop a little before the client's deadline, so that an answer cut
            # short (reranking abandoned) is still written back within it.
            margin_s = min(RESPONSE_MARGIN_S, budget_s / 5)
            deadline = Deadline(budget_s - margin_s, started_at=request_arrival.get())
            return await self._search(query, deadline)
        except SemsearchError as exc:
            metrics.SEARCHES.labels(exc.type).inc()
            raise
        finally:
            self._inflight -= 1

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
        )

        with _stage(timings, "cache"):
            cached = await self.cache.get(key)
        if cached is not None:
            result = decode_result(cached)
            result.cached = True
            result.request_id = current_request_id()
            result.timings_ms = _finish(timings, started)
            metrics.SEARCHES.labels("cached").inc()
            return result

        degraded: list[str] = []
        first = await self._first_stage(query, index, plan, deadline, timings, degraded)
        hits = first.hits
        scores: list[float] | None = None
        if query.rerank and hits:
            with _stage(timings, "rerank"):
                scores = await self._rerank(query.query, hits[: plan.depth], deadline)
            if scores is None:
                degraded.append("reranker")

        result = SearchResult(
            results=rank_results(hits, scores, query.top_k, plan.weight),
            reranked=scores is not None,
            degraded=degraded,
            cached=False,
            collection=query.collection,
            index_backend=first.backend,
            generation=first.generation,
            embedder_model=self.embedder.info.model_id,
            reranker_model=reranker_model if scores is not None else None,
            timings_ms={},
            request_id=current_request_id(),
            mode=first.mode,
            fusion=plan.fusion.key() if first.mode is SearchMode.HYBRID and plan.fusion else None,
        )
        if not degraded:
            with _stage(timings, "cache_store"):
                await self.cache.set(key, encode_result(result), self.config.cache_ttl_s)
        result.timings_ms = _finish(timings, started)
        for stage in degraded:
            metrics.SEARCH_DEGRADED.labels(stage).inc()
        metrics.SEARCHES.labels("degraded" if degraded else "full").inc()
        metrics.SEARCH_MODES.labels(first.mode.value).inc()
        return result

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
        )

    async def _first_stage(
        self,
        query: SearchQuery,
        index: Collection,
        plan: Plan,
        deadline: Deadline,
        timings: dict[str, float],
        degraded: list[str],
    ) -> FirstStage:
        """The candidates, best first: the dense list, the lexical list, or both fused. The
        lexical search runs while the query is embedded. Without a query vector the lexical
        list answers alone (503 only when there is none); without the lexical list, the dense
        one does."""
        lexical = (
            asyncio.create_task(self._lexical(index, query, deadline, timings))
            if plan.mode is not SearchMode.DENSE
            else None
        )
        try:
            dense: AnnResult | None = None
            if plan.mode is not SearchMode.LEXICAL:
                try:
                    with _stage(timings, "embed"):
                        vector = await self._embed(query.query, deadline)
                except EmbedderUnavailable:
                    if not index.has_lexical:
                        raise
                    degraded.append("embedder")
                    if lexical is None:  # dense asked for: words are better than nothing
                        lexical = asyncio.create_task(
                            self._lexical(index, query, deadline, timings)
                        )
                else:
                    with _stage(timings, "ann"):
                        dense = await self._ann(
                            index, vector, query.candidates, query.filter, deadline
                        )
            words: AnnResult | None = None
            if lexical is not None:
                try:
                    words = await lexical
                except (InvalidInput, Overloaded, DeadlineExceeded):
                    raise
                except SemsearchError as exc:
                    if dense is None:
                        raise
                    log.warning("lexical_skipped", reason=exc.message)
                    degraded.append("lexical")
        finally:
            if lexical is not None and not lexical.done():
                lexical.cancel()
        if (dense is not None and dense.degraded) or (words is not None and words.degraded):
            degraded.append("index")
        if dense is not None and words is not None:
            assert plan.fusion is not None
            fused = fuse(dense.hits[0], words.hits[0], plan.fusion)[: query.candidates]
            return FirstStage(fused, SearchMode.HYBRID, dense.backend, dense.generation)
        if dense is not None:
            return FirstStage(single(dense.hits[0], "dense"), SearchMode.DENSE, *_where(dense))
        assert words is not None
        return FirstStage(single(words.hits[0], "lexical"), SearchMode.LEXICAL, *_where(words))

    async def _lexical(
        self, index: Collection, query: SearchQuery, deadline: Deadline, timings: dict[str, float]
    ) -> AnnResult:
        with _stage(timings, "lexical"):
            try:
                return await self.guards.lexical.run(
                    lambda: index.lexical_search([query.query], query.candidates, query.filter),
                    deadline,
                )
            except (InvalidInput, Overloaded, DeadlineExceeded):
                raise
            except CircuitOpen as exc:
                raise IndexUnavailable(
                    f"the lexical index is failing (circuit open): {exc.message}",
                    retry_after_s=exc.retry_after_s,
                ) from exc
            except Exception as exc:
                reason = exc.message if isinstance(exc, SemsearchError) else repr(exc)
                raise IndexUnavailable(f"the lexical index cannot be searched: {reason}") from exc

    async def _embed(self, text: str, deadline: Deadline) -> FloatArray:
        try:
            embeddings = await self.guards.embed.run(
                lambda: self.embedder.embed([text], InputType.QUERY, Truncate.NONE), deadline
            )
        except InputTooLong as exc:
            raise InvalidInput(exc.message.replace("input 0", "the query"), field="query") from exc
        except PayloadTooLarge as exc:  # over the embedder service's own limits
            raise InvalidInput(
                f"the embedder refused the query: {exc.message}", field="query"
            ) from exc
        except (InvalidInput, Overloaded, DeadlineExceeded):
            raise
        except CircuitOpen as exc:
            raise EmbedderUnavailable(
                "the embedder is failing (circuit open), so no search is possible",
                retry_after_s=exc.retry_after_s,
            ) from exc
        except Exception as exc:
            reason = exc.message if isinstance(exc, SemsearchError) else repr(exc)
            raise EmbedderUnavailable(
                f"the query cannot be embedded, so no search is possible: {reason}"
            ) from exc
        return embeddings.vectors

    async def _ann(
        self,
        index: Collection,
        vector: FloatArray,
        k: int,
        filter: Filter | None,
        deadline: Deadline,
    ) -> AnnResult:
        try:
            return await self.guards.index.run(lambda: index.search(vector, k, filter), deadline)
        except (InvalidInput, Overloaded, DeadlineExceeded):
            raise
        except CircuitOpen as exc:
            raise IndexUnavailable(
                f"the index is failing (circuit open): {exc.message}",
                retry_after_s=exc.retry_after_s,
            ) from exc
        except Exception as exc:
            reason = exc.message if isinstance(exc, SemsearchError) else repr(exc)
            raise IndexUnavailable(f"the index cannot be searched: {reason}") from exc

    async def _rerank(self, text: str, hits: list[Hit], deadline: Deadline) -> list[float] | None:
        """Scores, or None when reranking was skipped: the answer is then in ANN order."""
        if deadline.remaining() * 1000 < self.config.min_rerank_budget_ms:
            log.info("rerank_skipped", reason="deadline", remaining_ms=deadline.remaining() * 1000)
            return None
        try:
            scores = await self.guards.rerank.run(
                lambda: self.reranker.score(text, [h.passage for h in hits], Truncate.END),
                deadline,
            )
        except Exception as exc:
            reason = exc.message if isinstance(exc, SemsearchError) else repr(exc)
            # A reranker known to be down was already reported once (model_load_failed, or
            # the breaker opening); a failure of a working one is news.
            down = not self.reranker.ready or isinstance(exc, CircuitOpen)
            (log.debug if down else log.warning)("rerank_skipped", reason=reason)
            return None
        if not all(math.isfinite(score) for score in scores):
            # an overflowing half-precision model, a broken export: no order can be made of it
            log.warning("rerank_skipped", reason="the reranker returned non-finite scores")
            return None
        return scores


@dataclass(frozen=True)
class FirstStage:
    hits: list[Hit]
    mode: SearchMode  # what it really was, after any degradation
    backend: str
    generation: int


def _where(result: AnnResult) -> tuple[str, int]:
    return result.backend, result.generation


@contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        timings[name] = round(elapsed * 1000, 3)
        metrics.SEARCH_STAGE_LATENCY.labels(name).observe(elapsed)


def _finish(timings: dict[str, float], started: float) -> dict[str, float]:
    elapsed = time.perf_counter() - started
    metrics.SEARCH_STAGE_LATENCY.labels("total").observe(elapsed)
    return {**timings, "total": round(elapsed * 1000, 3)}
