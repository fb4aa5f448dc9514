"""The search path with fake models, a real FAISS collection and the in-process cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from app.config import GatewaySettings
from app.errors import (
    EmbedderUnavailable,
    IndexUnavailable,
    InvalidInput,
    NotFound,
    RerankerUnavailable,
    Unavailable,
)
from app.index.collections import Collections
from app.models.fake import FakeEmbedder, FakeReranker
from app.search.cache import LRUCache, SafeCache
from app.search.config import Guards, PipelineConfig
from app.search.pipeline import SearchPipeline
from app.types import Document, InputType, SearchMode, SearchQuery, Truncate
from tests.conftest import SMALL_DOCS, build_collection


class BrokenReranker(FakeReranker):
    async def score(
        self, query: str, passages: Sequence[str], truncate: Truncate = Truncate.END
    ) -> list[float]:
        raise RerankerUnavailable("reranker service is down")


class BrokenEmbedder(FakeEmbedder):
    async def embed(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        raise Unavailable("connection refused")


class PrefersCats(FakeReranker):
    """Disagrees with the ANN order on purpose: the cats passage always wins."""

    async def score(
        self, query: str, passages: Sequence[str], truncate: Truncate = Truncate.END
    ) -> list[float]:
        return [5.0 if "Cats" in p else 0.0 for p in passages]


class FailingCache(LRUCache):
    async def get(self, key: str) -> bytes | None:
        raise ConnectionError("redis is down")

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        raise ConnectionError("redis is down")


async def make_pipeline(
    index_dir: Path,
    embedder: FakeEmbedder,
    reranker: FakeReranker,
    cache: LRUCache | None = None,
    **settings: int,
) -> SearchPipeline:
    """`settings`: gateway settings (SEMSEARCH_* names) that differ from the defaults."""
    config = GatewaySettings(index_dir=index_dir, **settings)  # type: ignore[arg-type]
    pipeline = SearchPipeline(
        embedder=embedder,
        reranker=reranker,
        collections=Collections.from_settings(config),
        cache=SafeCache(cache or LRUCache(config.cache_max_entries), timeout_s=1.0),
        config=PipelineConfig.from_settings(config),
        guards=Guards.from_settings(config),
        default_collection="default",
    )
    await pipeline.start()
    await pipeline.wait_ready()
    return pipeline


def query(text: str, **kwargs: object) -> SearchQuery:
    fields: dict[str, object] = {"collection": "default", "top_k": 3, "candidates": 5}
    fields.update(kwargs)
    return SearchQuery(query=text, **fields)  # type: ignore[arg-type]


async def test_full_path_reranks_and_reports_every_stage(
    small_collection: Path, fake_embedder: FakeEmbedder, fake_reranker: FakeReranker
) -> None:
    pipeline = await make_pipeline(small_collection, fake_embedder, fake_reranker)
    result = await pipeline.search(query("capital of Germany Berlin"))

    assert next(r.hit.id for r in result.results) == "berlin"
    assert [r.rank for r in result.results] == [1, 2, 3]
    assert result.reranked is True
    assert result.degraded == []
    assert result.cached is False
    assert result.index_backend == "faiss"
    assert result.generation == 1
    assert set(result.timings_ms) >= {"cache", "embed", "ann", "rerank", "total"}
    top = result.results[0]
    assert top.rerank_score is not None
    scores = [r.score for r in result.results]
    assert scores == sorted(scores, reverse=True)  # the blended score decides the order
    alone = await pipeline.search(query("capital of Germany Berlin", rerank_weight=1.0))
    assert alone.results[0].score == pytest.approx(alone.results[0].rerank_score)
    assert top.hit.metadata == {"lang": "en", "topic": "city"}
    # the query was embedded as a query, the passages reranked with their titles
    assert fake_embedder.calls[-1][1].value == "query"
    assert any(p.startswith("Berlin Berlin is") for p in fake_reranker.calls[-1][1])


async def test_reranker_decides_the_order_not_ann(
    small_collection: Path, fake_embedder: FakeEmbedder
) -> None:
    pipeline = await make_pipeline(small_collection, fake_embedder, PrefersCats())
    result = await pipeline.search(query("capital of Germany Berlin", rerank_weight=1.0))
    assert result.results[0].hit.id == "cats"
    assert result.results[0].hit.score < result.results[1].hit.score  # ANN disagreed

    plain = await pipeline.search(query("capital of Germany Berlin", rerank=False))
    assert plain.results[0].hit.id == "berlin"
    assert plain.reranked is False
    assert plain.degraded == []
    assert plain.results[0].rerank_score is None
    assert plain.results[0].score == pytest.approx(plain.results[0].hit.score)


async def test_rerank_depth_limits_what_the_cross_encoder_sees(
    small_collection: Path, fake_embedder: FakeEmbedder, fake_reranker: FakeReranker
) -> None:
    pipeline = await make_pipeline(small_collection, fake_embedder, fake_reranker, rerank_depth=2)
    result = await pipeline.search(query("programming language", top_k=4))
    assert len(fake_reranker.calls[-1][1]) == 2
    assert [r.rerank_score is not None for r in result.results] == [True, True, False, False]
    assert [r.rank for r in result.results] == [1, 2, 3, 4]


async def test_second_identical_query_is_served_from_cache(
    small_collection: Path, fake_embedder: FakeEmbedder, fake_reranker: FakeReranker
) -> None:
    pipeline = await make_pipeline(small_collection, fake_embedder, fake_reranker)
    first = await pipeline.search(query("Python readability"))
    calls = len(fake_embedder.calls)
    second = await pipeline.search(query("  Python   readability "))  # same after normalizing

    assert first.cached is False
    assert second.cached is True
    assert len(fake_embedder.calls) == calls  # no model work on a hit
    assert [r.hit.id for r in second.results] == [r.hit.id for r in first.results]
    assert [r.score for r in second.results] == pytest.approx([r.score for r in first.results])
    assert second.reranked is True
    assert "embed" not in second.timings_ms

    other_k = await pipeline.search(query("Python readability", top_k=2))
    assert other_k.cached is False


class _SlowWrites(LRUCache):
    def __init__(self, max_entries: int) -> None:
        super().__init__(max_entries)
        self.written: list[str] = []

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        await asyncio.sleep(0.6)  # within the cache's 1 s timeout
        await super().set(key, value, ttl_s)
        self.written.append(key)


async def test_the_answer_does_not_wait_for_its_cache_write_and_asking_again_finds_it(
    small_collection: Path, fake_embedder: FakeEmbedder, fake_reranker: FakeReranker
) -> None:
    cache = _SlowWrites(10)
    pipeline = await make_pipeline(small_collection, fake_embedder, fake_reranker, cache)
    started = time.perf_counter()
    first = await pipeline.search(query("Python readability"))
    assert time.perf_counter() - started < 0.6  # the 0.6 s write runs after the answer
    assert first.cached is False and "cache_store" not in first.timings_ms
    second = await pipeline.search(query("Python readability"))  # waits for the write
    assert second.cached is True
    assert [r.hit.id for r in second.results] == [r.hit.id for r in first.results]

    await pipeline.search(query("Rust memory safety"))  # a write still running at stop
    assert len(cache.written) == 1
    await pipeline.stop()  # waits for it
    assert len(cache.written) == 2


async def test_reranker_down_degrades_to_ann_order_and_is_not_cached(
    small_collection: Path, fake_embedder: FakeEmbedder
) -> None:
    pipeline = await make_pipeline(small_collection, fake_embedder, BrokenReranker())
    first = await pipeline.search(query("capital of Germany Berlin"))
    assert first.reranked is False
    assert first.degraded == ["reranker"]
    assert first.results[0].hit.id == "berlin"
    scores = [r.score for r in first.results]
    assert scores == sorted(scores, reverse=True)
    again = await pipeline.search(query("capital of Germany Berlin"))
    assert again.cached is False  # a degraded answer must not be served from the cache later


async def test_embedder_down_is_a_clear_503(
    dense_only_collection: Path, fake_reranker: FakeReranker
) -> None:
    """Without a lexical index there is no answer without a query vector."""
    pipeline = await make_pipeline(
        dense_only_collection, BrokenEmbedder(model_id="fake-embedder"), fake_reranker
    )
    with pytest.raises(EmbedderUnavailable, match="no search is possible"):
        await pipeline.search(query("anything"))


async def test_cache_failure_never_fails_a_search(
    small_collection: Path, fake_embedder: FakeEmbedder, fake_reranker: FakeReranker
) -> None:
    pipeline = await make_pipeline(
        small_collection, fake_embedder, fake_reranker, FailingCache(100)
    )
    result = await pipeline.search(query("Paris France"))
    assert result.results[0].hit.id == "paris"
    assert result.degraded == []
    assert result.cached is False


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": 101}, "top_k"),
        ({"candidates": 0}, "candidates"),
        ({"candidates": 1001, "top_k": 3}, "candidates"),
        ({"candidates": 2, "top_k": 3}, "candidates"),
    ],
)
async def test_out_of_range_values_name_the_field(
    small_collection: Path,
    fake_embedder: FakeEmbedder,
    fake_reranker: FakeReranker,
    kwargs: dict[str, int],
    field: str,
) -> None:
    pipeline = await make_pipeline(small_collection, fake_embedder, fake_reranker)
    with pytest.raises(InvalidInput) as raised:
        await pipeline.search(query("x", **kwargs))
    assert raised.value.field == field
    assert [c for c in fake_embedder.calls if c[1] is InputType.QUERY] == []  # refused first


async def test_query_over_the_character_limit(
    small_collection: Path, fake_embedder: FakeEmbedder, fake_reranker: FakeReranker
) -> None:
    pipeline = await make_pipeline(
        small_collection, fake_embedder, fake_reranker, max_query_chars=20
    )
    with pytest.raises(InvalidInput, match="20") as raised:
        await pipeline.search(query("x" * 21))
    assert raised.value.field == "query"


async def test_query_over_the_model_window_is_refused_not_cut(
    small_collection: Path, fake_reranker: FakeReranker
) -> None:
    embedder = FakeEmbedder(model_id="fake-embedder", max_tokens=5)
    pipeline = await make_pipeline(small_collection, embedder, fake_reranker)
    with pytest.raises(InvalidInput, match="the query") as raised:
        await pipeline.search(query("one two three four five six"))
    assert raised.value.field == "query"


async def test_unknown_collection_is_not_found(
    small_collection: Path, fake_embedder: FakeEmbedder, fake_reranker: FakeReranker
) -> None:
    pipeline = await make_pipeline(small_collection, fake_embedder, fake_reranker)
    with pytest.raises(NotFound, match="known: default"):
        await pipeline.search(query("x", collection="nope"))
    with pytest.raises(InvalidInput):
        await pipeline.search(query("x", collection="../etc"))


async def test_collection_built_with_another_model_is_refused(
    small_collection: Path, fake_reranker: FakeReranker
) -> None:
    pipeline = await make_pipeline(
        small_collection, FakeEmbedder(model_id="other-model"), fake_reranker
    )
    with pytest.raises(Unavailable, match="indexed with 'fake-embedder'"):
        await pipeline.search(query("x"))


async def test_new_generation_changes_answers_and_cache_keys(
    small_collection: Path, fake_embedder: FakeEmbedder, fake_reranker: FakeReranker
) -> None:
    pipeline = await make_pipeline(small_collection, fake_embedder, fake_reranker)
    before = await pipeline.search(query("Madrid Spain capital"))
    assert "madrid" not in [r.hit.id for r in before.results]

    writer = await build_collection(
        small_collection,
        "default",
        [*SMALL_DOCS, Document("madrid", "Madrid is the capital of Spain.", "Madrid")],
        fake_embedder,
    )
    await writer.close()
    await pipeline.refresh()
    after = await pipeline.search(query("Madrid Spain capital"))
    assert after.generation == 2
    assert after.cached is False
    assert after.results[0].hit.id == "madrid"


async def test_status_reports_components(
    small_collection: Path, fake_embedder: FakeEmbedder, fake_reranker: FakeReranker
) -> None:
    pipeline = await make_pipeline(small_collection, fake_embedder, fake_reranker)
    ready, components = pipeline.status()
    assert ready is True
    assert components["collections"] == {
        "default": {
            "backend": "faiss",
            "generation": 1,
            "model": "fake-embedder",
            "lexical": True,
            "fusion_weight": 0.3,  # five one-sentence documents: too few to calibrate
        }
    }
    assert components["cache"] == "memory"


class Unreached(BrokenEmbedder):
    @property
    def ready(self) -> bool:
        return False


async def test_with_a_lexical_index_the_gateway_is_ready_before_its_embedder(
    small_collection: Path, fake_reranker: FakeReranker
) -> None:
    """It can answer (from the lexical index, flagged) without a query vector."""
    pipeline = await make_pipeline(small_collection, Unreached("fake-embedder"), fake_reranker)
    assert pipeline.status()[0] is True
    result = await pipeline.search(query("capital of France"))
    assert result.degraded[0] == "embedder" and result.results[0].hit.id == "paris"


async def test_without_one_it_waits_for_the_embedder(
    dense_only_collection: Path, fake_reranker: FakeReranker
) -> None:
    pipeline = await make_pipeline(dense_only_collection, Unreached("fake-embedder"), fake_reranker)
    assert pipeline.status()[0] is False


def test_fusion_blends_z_scores() -> None:
    from app.search.ranking import fuse

    ann = [0.9, 0.8, 0.7]
    rerank = [-2.0, 4.0, 1.0]
    assert fuse(ann, rerank, 1.0) == rerank
    only_ann = fuse(ann, rerank, 0.0)
    assert sorted(range(3), key=lambda i: -only_ann[i]) == [0, 1, 2]
    half = fuse(ann, rerank, 0.5)
    assert sorted(range(3), key=lambda i: -half[i]) == [1, 0, 2] or sorted(
        range(3), key=lambda i: -half[i]
    ) == [1, 2, 0]
    assert fuse([0.5, 0.5], [1.0, 1.0], 0.5) == [0.0, 0.0]  # no spread, no NaN


async def test_weight_and_depth_per_request(
    small_collection: Path, fake_embedder: FakeEmbedder
) -> None:
    pipeline = await make_pipeline(small_collection, fake_embedder, PrefersCats())
    reranker_only = await pipeline.search(query("capital of Germany Berlin", rerank_weight=1.0))
    assert reranker_only.results[0].hit.id == "cats"
    ann_only = await pipeline.search(query("capital of Germany Berlin", rerank_weight=0.0))
    assert ann_only.results[0].hit.id == "berlin" and ann_only.reranked
    assert ann_only.results[0].rerank_score == 0.0
    shallow = await pipeline.search(query("capital of Germany Berlin", rerank_depth=1))
    assert [r.rerank_score is not None for r in shallow.results] == [True, False, False]
    with pytest.raises(InvalidInput) as raised:
        await pipeline.search(query("x", rerank_weight=1.5))
    assert raised.value.field == "rerank_weight"


async def test_metadata_filter_restricts_and_is_part_of_the_cache_key(
    small_collection: Path, fake_embedder: FakeEmbedder, fake_reranker: FakeReranker
) -> None:
    pipeline = await make_pipeline(small_collection, fake_embedder, fake_reranker)
    everything = await pipeline.search(query("programming language Berlin", top_k=5))
    software = await pipeline.search(
        query("programming language Berlin", top_k=5, filter={"topic": "software"})
    )
    assert {r.hit.id for r in software.results} == {"rust", "python"}
    assert software.cached is False and len(everything.results) == 5
    several = await pipeline.search(query("Berlin", top_k=5, filter={"topic": ["city", "animal"]}))
    assert {r.hit.id for r in several.results} == {"berlin", "paris", "cats"}
    with pytest.raises(InvalidInput) as raised:
        await pipeline.search(query("x", filter={"bad key!": 1}))
    assert raised.value.field == "filter"


# -- hybrid retrieval -------------------------------------------------------------------------


async def test_hybrid_fuses_both_lists_and_says_what_found_each_hit(
    small_collection: Path, fake_embedder: FakeEmbedder, fake_reranker: FakeReranker
) -> None:
    pipeline = await make_pipeline(small_collection, fake_embedder, fake_reranker)
    result = await pipeline.search(query("capital of France", rerank=False))
    assert result.mode is SearchMode.HYBRID and result.degraded == []
    assert result.fusion == {"method": "blend", "weight": 0.3, "rrf_k": 60}  # uncalibrated
    top = result.results[0].hit
    assert top.id == "paris" and top.found_by == ["dense", "lexical"]
    assert top.dense_score is not None and top.lexical_score is not None
    assert {"embed", "ann", "lexical"} <= set(result.timings_ms)
    # another fusion is another answer: no cached one is reused for it
    rrf = await pipeline.search(query("capital of France", rerank=False, fusion_method="rrf"))
    assert not rrf.cached and rrf.fusion == {"method": "rrf", "weight": 0.5, "rrf_k": 60}


async def test_lexical_mode_needs_no_query_vector_and_dense_mode_no_words(
    small_collection: Path, fake_embedder: FakeEmbedder, fake_reranker: FakeReranker
) -> None:
    pipeline = await make_pipeline(small_collection, fake_embedder, fake_reranker)
    calls = len(fake_embedder.calls)
    words = await pipeline.search(query("Python readability", mode=SearchMode.LEXICAL))
    assert len(fake_embedder.calls) == calls  # nothing embedded
    assert words.mode is SearchMode.LEXICAL and words.results[0].hit.id == "python"
    assert all(r.hit.found_by == ["lexical"] for r in words.results)
    assert "embed" not in words.timings_ms and "lexical" in words.timings_ms
    meaning = await pipeline.search(query("Python readability", mode=SearchMode.DENSE))
    assert not meaning.cached  # the mode is part of the cache key
    assert all(r.hit.found_by == ["dense"] for r in meaning.results)
    assert "lexical" not in meaning.timings_ms


async def test_filters_apply_to_both_lists(
    small_collection: Path, fake_embedder: FakeEmbedder, fake_reranker: FakeReranker
) -> None:
    pipeline = await make_pipeline(small_collection, fake_embedder, fake_reranker)
    for mode in SearchMode:
        result = await pipeline.search(
            query("capital programming language", mode=mode, filter={"topic": "software"})
        )
        assert {r.hit.id for r in result.results} <= {"rust", "python"}, mode


async def test_a_failing_lexical_index_leaves_the_dense_answer(
    small_collection: Path, fake_embedder: FakeEmbedder, fake_reranker: FakeReranker
) -> None:
    pipeline = await make_pipeline(small_collection, fake_embedder, fake_reranker)
    index = await pipeline.collections.get("default")

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("segment file gone")

    index.lexical_search = broken  # type: ignore[method-assign]
    result = await pipeline.search(query("capital of France"))
    assert result.degraded == ["lexical"] and result.mode is SearchMode.DENSE
    assert result.results[0].hit.id == "paris"
    with pytest.raises(IndexUnavailable, match="segment file gone"):
        await pipeline.search(query("capital of France", mode=SearchMode.LEXICAL))


async def test_a_collection_without_a_lexical_index_is_dense(
    dense_only_collection: Path, fake_embedder: FakeEmbedder, fake_reranker: FakeReranker
) -> None:
    pipeline = await make_pipeline(dense_only_collection, fake_embedder, fake_reranker)
    result = await pipeline.search(query("capital of France"))
    assert result.mode is SearchMode.DENSE and result.degraded == [] and result.fusion is None
    with pytest.raises(InvalidInput, match="semsearch rebuild --collection default") as raised:
        await pipeline.search(query("capital of France", mode=SearchMode.LEXICAL))
    assert raised.value.field == "mode"


async def test_an_answer_the_cache_cannot_encode_is_served_and_not_cached(
    tmp_path: Path, fake_embedder: FakeEmbedder, fake_reranker: FakeReranker
) -> None:
    """JSON allows integers beyond 64 bits in metadata; the cache's codec (orjson) does not.
    Such an answer is given, just not cached (it used to be a 500 on every search)."""
    big = 123456789012345678901234567890
    docs = [Document("big", "Zebras graze on the savanna.", "Zebras", {"n": big})]
    writer = await build_collection(tmp_path, "default", docs, fake_embedder)
    await writer.close()
    pipeline = await make_pipeline(tmp_path, fake_embedder, fake_reranker)
    for _ in range(2):
        result = await pipeline.search(query("zebras"))
        assert result.results[0].hit.metadata == {"n": big}
        assert result.cached is False
