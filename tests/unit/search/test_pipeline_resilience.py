"""The search path when parts fail or are slow: deadline, fallback index, shedding, breakers."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from app.config import GatewaySettings
from app.errors import (
    DeadlineExceeded,
    EmbedderUnavailable,
    IndexUnavailable,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    Unavailable,
)
from app.index.base import AnnResult, VectorIndex
from app.index.collections import Collections
from app.models.fake import FakeEmbedder, FakeReranker
from app.search.cache import LRUCache, SafeCache
from app.search.config import Guards, PipelineConfig
from app.search.pipeline import SearchPipeline
from app.types import SearchMode, SearchQuery, Truncate
from tests.conftest import SMALL_DOCS, build_collection, faiss_options


class SlowReranker(FakeReranker):
    def __init__(self, delay_s: float) -> None:
        super().__init__(model_id="fake-reranker")
        self.delay_s = delay_s

    async def score(
        self, query: str, passages: Sequence[str], truncate: Truncate = Truncate.END
    ) -> list[float]:
        await asyncio.sleep(self.delay_s)
        return await super().score(query, passages, truncate)


class SlowEmbedder(FakeEmbedder):
    def __init__(self, delay_s: float) -> None:
        super().__init__(model_id="fake-embedder")
        self.delay_s = delay_s

    async def embed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.delay_s)
        return await super().embed(*args, **kwargs)


class DownEmbedder(FakeEmbedder):
    calls = 0

    async def embed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        DownEmbedder.calls += 1
        raise Unavailable("connection refused")


async def pipeline_for(
    settings: GatewaySettings, embedder: FakeEmbedder, reranker: FakeReranker, **config: int
) -> SearchPipeline:
    """`config`: settings (SEMSEARCH_* names) for the search path only, not for its guards."""
    pipeline = SearchPipeline(
        embedder=embedder,
        reranker=reranker,
        collections=Collections.from_settings(settings),
        cache=SafeCache(LRUCache(settings.cache_max_entries), 1.0),
        config=PipelineConfig.from_settings(GatewaySettings(**config)),
        guards=Guards.from_settings(settings),
        default_collection="default",
    )
    await pipeline.start()
    await pipeline.wait_ready()
    return pipeline


async def primary_and_fallback_copies(root: Path, embedder: FakeEmbedder) -> None:
    """The same collection written twice, under root/primary and root/fallback."""
    for where in ("primary", "fallback"):
        index = await build_collection(root / where, "default", SMALL_DOCS, embedder)
        await index.close()


def q(text: str = "capital of Germany Berlin", **kwargs: object) -> SearchQuery:
    fields: dict[str, object] = {"collection": "default", "top_k": 3, "candidates": 5}
    fields.update(kwargs)
    return SearchQuery(query=text, **fields)  # type: ignore[arg-type]


async def test_slow_reranker_is_cut_by_the_deadline_and_degrades(small_collection: Path) -> None:
    settings = GatewaySettings(index_dir=small_collection)
    pipeline = await pipeline_for(settings, FakeEmbedder(model_id="fake-embedder"), SlowReranker(5))
    started = asyncio.get_running_loop().time()
    result = await pipeline.search(q(timeout_ms=300))
    elapsed = asyncio.get_running_loop().time() - started
    assert elapsed < 1.0
    assert result.degraded == ["reranker"] and result.reranked is False
    assert result.results[0].hit.id == "berlin"


async def test_too_little_time_left_skips_the_reranker_without_calling_it(
    small_collection: Path,
) -> None:
    settings = GatewaySettings(index_dir=small_collection)
    reranker = FakeReranker(model_id="fake-reranker")
    pipeline = await pipeline_for(settings, SlowEmbedder(0.1), reranker, min_rerank_budget_ms=100)
    result = await pipeline.search(q(timeout_ms=200))
    assert result.degraded == ["reranker"]
    assert reranker.calls == []


async def test_embedding_past_the_deadline_is_504(small_collection: Path) -> None:
    settings = GatewaySettings(index_dir=small_collection)
    pipeline = await pipeline_for(settings, SlowEmbedder(5), FakeReranker(model_id="fake-reranker"))
    started = asyncio.get_running_loop().time()
    with pytest.raises(DeadlineExceeded):
        await pipeline.search(q(timeout_ms=200))
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_timeout_ms_is_bounded(small_collection: Path) -> None:
    settings = GatewaySettings(index_dir=small_collection)
    pipeline = await pipeline_for(
        settings,
        FakeEmbedder(model_id="fake-embedder"),
        FakeReranker(model_id="fake-reranker"),
        max_timeout_ms=1000,
        search_timeout_ms=1000,
    )
    for out_of_range in (1001, 99):  # below 100 ms no search can finish: 422, not a later 504
        with pytest.raises(InvalidInput) as raised:
            await pipeline.search(q(timeout_ms=out_of_range))
        assert raised.value.field == "timeout_ms"


async def test_the_deadline_counts_from_the_requests_arrival(small_collection: Path) -> None:
    """Time a request spent queued before the search started is spent from its budget."""
    from app.resilience import request_arrival

    settings = GatewaySettings(index_dir=small_collection)
    pipeline = await pipeline_for(
        settings, SlowEmbedder(0.2), FakeReranker(model_id="fake-reranker")
    )
    token = request_arrival.set(asyncio.get_running_loop().time() - 0.9)  # arrived 900 ms ago
    try:
        with pytest.raises(DeadlineExceeded):
            await pipeline.search(q(timeout_ms=1000))
    finally:
        request_arrival.reset(token)


async def test_embedder_failures_open_its_breaker_and_answer_fast(
    dense_only_collection: Path,
) -> None:
    settings = GatewaySettings(
        index_dir=dense_only_collection, breaker_failure_threshold=2, retry_attempts=1
    )
    DownEmbedder.calls = 0
    pipeline = await pipeline_for(
        settings, DownEmbedder(model_id="fake-embedder"), FakeReranker(model_id="fake-reranker")
    )
    for _ in range(2):
        with pytest.raises(EmbedderUnavailable):
            await pipeline.search(q())
    with pytest.raises(EmbedderUnavailable, match="circuit open") as raised:
        await pipeline.search(q())
    assert DownEmbedder.calls == 2  # the third was refused without calling the embedder
    assert raised.value.retry_after_s > 1
    assert pipeline.status()[1]["circuits"] == {
        "embedder": "open",
        "index": "closed",
        "lexical": "closed",
        "reranker": "closed",
    }


async def test_without_a_query_vector_the_lexical_list_answers(small_collection: Path) -> None:
    """Embedder down, its circuit open: 200 from BM25 alone, flagged, never cached."""
    settings = GatewaySettings(
        index_dir=small_collection, breaker_failure_threshold=2, retry_attempts=1
    )
    DownEmbedder.calls = 0
    pipeline = await pipeline_for(
        settings, DownEmbedder(model_id="fake-embedder"), FakeReranker(model_id="fake-reranker")
    )
    for _ in range(4):  # the breaker opens after two failures; the answers do not change
        result = await pipeline.search(q("capital of Germany"))
        assert result.degraded == ["embedder"]
        assert result.mode is SearchMode.LEXICAL and not result.cached
        top = result.results[0].hit
        assert top.id == "berlin" and top.found_by == ["lexical"] and top.dense_score is None
    assert DownEmbedder.calls == 2
    assert pipeline.status()[1]["circuits"]["embedder"] == "open"
    dense = await pipeline.search(q("capital of Germany", mode=SearchMode.DENSE))
    assert dense.degraded == ["embedder"] and dense.mode is SearchMode.LEXICAL


async def test_transient_embedder_fault_is_retried_inside_the_deadline(
    small_collection: Path,
) -> None:
    class Blips(FakeEmbedder):
        failures = 1

        async def embed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if self.failures:
                self.failures -= 1
                raise Unavailable("connection reset")
            return await super().embed(*args, **kwargs)

    settings = GatewaySettings(index_dir=small_collection, retry_attempts=2)
    pipeline = await pipeline_for(
        settings, Blips(model_id="fake-embedder"), FakeReranker(model_id="fake-reranker")
    )
    result = await pipeline.search(q())
    assert result.results[0].hit.id == "berlin"


async def test_load_is_shed_before_any_work(small_collection: Path) -> None:
    settings = GatewaySettings(index_dir=small_collection)
    embedder = SlowEmbedder(0.3)
    pipeline = await pipeline_for(
        settings, embedder, FakeReranker(model_id="fake-reranker"), max_inflight_searches=2
    )
    running = [asyncio.ensure_future(pipeline.search(q(f"query {i}"))) for i in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(Overloaded) as raised:
        await pipeline.search(q("one too many"))
    assert raised.value.retry_after_s >= 1
    await asyncio.gather(*running)
    assert (await pipeline.search(q("room again"))).results


async def test_a_slow_reranker_cannot_starve_embedding(small_collection: Path) -> None:
    """The reranker bulkhead is full of slow calls; searches still embed and answer (degraded)."""
    settings = GatewaySettings(index_dir=small_collection, reranker_concurrency=1)
    pipeline = await pipeline_for(
        settings, FakeEmbedder(model_id="fake-embedder"), SlowReranker(1.0)
    )
    results = await asyncio.gather(
        *(pipeline.search(q(f"Berlin {i}", timeout_ms=500)) for i in range(5))
    )
    assert all(r.results[0].hit.id == "berlin" for r in results)
    assert sum(r.degraded == ["reranker"] for r in results) == 5


async def test_failing_primary_index_falls_back(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    await primary_and_fallback_copies(tmp_path, fake_embedder)
    settings = GatewaySettings(
        index_dir=tmp_path / "primary",
        fallback_index_dir=tmp_path / "fallback",
        breaker_failure_threshold=2,
    )
    pipeline = await pipeline_for(settings, fake_embedder, FakeReranker(model_id="fake-reranker"))
    fallback_index = await pipeline.collections.get("default")
    healthy = await pipeline.search(q())
    assert healthy.degraded == []

    broken = {"on": True}
    primary = fallback_index.primary  # type: ignore[attr-defined]
    real_search = primary.search

    async def failing(vectors, k, filter=None):  # type: ignore[no-untyped-def]
        if broken["on"]:
            raise IndexUnavailable("qdrant is down")
        return await real_search(vectors, k, filter)

    async def failing_words(texts, k, filter=None):  # type: ignore[no-untyped-def]
        raise IndexUnavailable("qdrant is down")

    primary.search = failing
    primary.lexical_search = failing_words  # the primary is down: neither list answers
    for i in range(4):
        result = await pipeline.search(q(f"Berlin Germany {i}"))
        assert result.degraded == ["index"]
        assert result.results[0].hit.id == "berlin"
    assert pipeline.collections.status()["default"]["primary_circuit"] == "open"
    again = await pipeline.search(q("Berlin Germany 0"))
    assert again.cached is False  # degraded answers are never cached


async def test_no_fallback_and_a_failing_index_is_503(small_collection: Path) -> None:
    settings = GatewaySettings(index_dir=small_collection, retry_attempts=1)
    pipeline = await pipeline_for(
        settings, FakeEmbedder(model_id="fake-embedder"), FakeReranker(model_id="fake-reranker")
    )
    index = await pipeline.collections.get("default")

    async def failing(vectors, k, filter=None) -> AnnResult:  # type: ignore[no-untyped-def]
        raise RuntimeError("disk gone")

    index.search = failing  # type: ignore[method-assign]
    with pytest.raises(IndexUnavailable, match="disk gone"):
        await pipeline.search(q())


async def test_a_hanging_primary_index_fails_over_to_the_fallback_in_time(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    await primary_and_fallback_copies(tmp_path, fake_embedder)
    settings = GatewaySettings(
        index_dir=tmp_path / "primary",
        fallback_index_dir=tmp_path / "fallback",
        primary_index_timeout_ms=200,
        breaker_failure_threshold=2,
    )
    pipeline = await pipeline_for(settings, fake_embedder, FakeReranker(model_id="fake-reranker"))
    index = await pipeline.collections.get("default")

    async def hangs(vectors, k, filter=None):  # type: ignore[no-untyped-def]
        await asyncio.sleep(3600)  # Qdrant stopped, or a network partition: no answer at all

    async def hangs_too(texts, k, filter=None):  # type: ignore[no-untyped-def]
        await asyncio.sleep(3600)

    index.primary.search = hangs  # type: ignore[attr-defined]
    index.primary.lexical_search = hangs_too  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    for i in range(4):
        started = loop.time()
        # 2 s: reranking (40% of the deadline, from arrival) still fits after the 200 ms wait
        result = await pipeline.search(q(f"Berlin Germany {i}", timeout_ms=2000))
        assert loop.time() - started < 0.6
        assert result.degraded == ["index"] and result.results[0].hit.id == "berlin"
    circuits = pipeline.status()[1]["circuits"]
    assert circuits["index"] == "closed"  # the stage answered every time, from the fallback
    assert pipeline.collections.status()["default"]["primary_circuit"] == "open"


async def test_a_primary_that_fails_to_open_leaves_the_fallback_serving_until_it_opens(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    await primary_and_fallback_copies(tmp_path, fake_embedder)
    [stored] = (tmp_path / "primary" / "default").glob("generations/gen-*/index.faiss")
    good = stored.read_bytes()
    stored.write_bytes(b"not a faiss index")
    settings = GatewaySettings(
        index_dir=tmp_path / "primary", fallback_index_dir=tmp_path / "fallback"
    )
    pipeline = await pipeline_for(settings, fake_embedder, FakeReranker(model_id="fake-reranker"))
    assert pipeline.status()[0] is True
    result = await pipeline.search(q())
    assert result.degraded == ["index"] and result.results[0].hit.id == "berlin"

    stored.write_bytes(good)  # repaired (in real life: a new generation published)
    await pipeline.refresh()
    result = await pipeline.search(q("Berlin Germany again"))
    assert result.degraded == [] and result.index_backend == "faiss"


async def test_opening_a_collection_is_bounded_by_the_deadline_and_blocks_no_other(
    small_collection: Path,
) -> None:
    from app.index.faiss.index import FaissIndex

    released = asyncio.Event()
    openings: list[str] = []

    async def opener(name: str) -> VectorIndex:
        openings.append(name)
        if name == "slow":
            await released.wait()  # a Qdrant that accepts connections and never answers
        if name == "broken":
            raise RuntimeError("Error in faiss::read_index: bad magic")
        return await FaissIndex.open(small_collection, "default", faiss_options())

    async def discover() -> list[str]:
        return []

    collections = Collections(opener, discover)
    loop = asyncio.get_running_loop()
    started = loop.time()
    slow = [asyncio.ensure_future(collections.get("slow", wait_s=0.3)) for _ in range(2)]
    fast = await collections.get("fast", wait_s=0.3)
    assert fast.collection == "default" and loop.time() - started < 0.2
    for waiter in slow:
        with pytest.raises(DeadlineExceeded):
            await waiter
    assert loop.time() - started < 0.6
    assert openings.count("slow") == 1  # the waiters shared one opening

    released.set()  # the opening went on without them: the next request finds it open
    assert (await collections.get("slow", wait_s=1)).collection == "default"
    with pytest.raises(IndexUnavailable, match="bad magic"):
        await collections.get("broken")
    await collections.close()


async def test_a_query_the_embedder_service_refuses_as_too_large_is_a_client_error(
    small_collection: Path,
) -> None:
    class Refuses(FakeEmbedder):
        async def embed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise PayloadTooLarge("input[0] is 36000 characters; the limit is 32000")

    settings = GatewaySettings(index_dir=small_collection)
    pipeline = await pipeline_for(
        settings, Refuses(model_id="fake-embedder"), FakeReranker(model_id="fake-reranker")
    )
    with pytest.raises(InvalidInput, match="the limit is 32000") as raised:
        await pipeline.search(q())
    assert raised.value.field == "query"
    assert pipeline.status()[1]["circuits"]["embedder"] == "closed"


async def test_non_finite_rerank_scores_degrade_instead_of_breaking_the_answer(
    small_collection: Path,
) -> None:
    class Overflows(FakeReranker):
        async def score(
            self, query: str, passages: Sequence[str], truncate: Truncate = Truncate.END
        ) -> list[float]:
            return [float("nan")] + [1.0] * (len(passages) - 1)

    settings = GatewaySettings(index_dir=small_collection)
    pipeline = await pipeline_for(
        settings, FakeEmbedder(model_id="fake-embedder"), Overflows(model_id="fake-reranker")
    )
    result = await pipeline.search(q())
    assert result.degraded == ["reranker"] and result.results[0].hit.id == "berlin"
    assert all(math.isfinite(r.score) for r in result.results)


async def test_reranking_gets_only_its_share_of_the_deadline_while_others_search(
    small_collection: Path,
) -> None:
    settings = GatewaySettings(index_dir=small_collection)
    pipeline = await pipeline_for(
        settings, FakeEmbedder(model_id="fake-embedder"), SlowReranker(0.6)
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    alone = await pipeline.search(q(timeout_ms=1000))  # alone: the whole second is its own
    assert alone.degraded == [] and 0.6 <= loop.time() - started < 0.95
    started = loop.time()
    together = await asyncio.gather(  # 1 s each, of which reranking gets 40%
        *(pipeline.search(q(f"capital of Germany Berlin {i}", timeout_ms=1000)) for i in range(2))
    )
    assert loop.time() - started < 0.7
    for result in together:
        assert result.degraded == ["reranker"] and result.results[0].hit.id == "berlin"


async def test_a_busy_reranker_degrades_the_answer_without_counting_against_it(
    small_collection: Path,
) -> None:
    class Busy(FakeReranker):
        async def score(
            self, query: str, passages: Sequence[str], truncate: Truncate = Truncate.END
        ) -> list[float]:
            raise Overloaded("reranker queue would answer too late", retry_after_s=2)

    settings = GatewaySettings(index_dir=small_collection, breaker_failure_threshold=1)
    pipeline = await pipeline_for(
        settings, FakeEmbedder(model_id="fake-embedder"), Busy(model_id="fake-reranker")
    )
    for i in range(3):
        result = await pipeline.search(q(f"Berlin {i}"))
        assert result.degraded == ["reranker"] and result.results[0].hit.id == "berlin"
    assert pipeline.status()[1]["circuits"]["reranker"] == "closed"


async def test_searches_slower_than_their_target_shrink_the_admission_limit(
    small_collection: Path,
) -> None:
    settings = GatewaySettings(index_dir=small_collection)
    pipeline = await pipeline_for(
        settings,
        SlowEmbedder(0.25),  # over 20% of a 1 s deadline
        FakeReranker(model_id="fake-reranker"),
        max_inflight_searches=8,
    )
    assert pipeline.status()[1]["admission_limit"] == 8
    for i in range(3):
        await pipeline.search(q(f"Berlin {i}", timeout_ms=1000))
    assert pipeline.status()[1]["admission_limit"] < 8
