"""Cache keys, the in-process LRU, the never-failing wrapper, and Redis for real."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.search.cache import LRUCache, RedisCache, SafeCache, build_cache, cache_key
from app.search.query import normalize_query

BASE: dict[str, Any] = {
    "collection": "docs",
    "generation": 3,
    "embedder_model": "e",
    "reranker_model": "r",
    "query": "What is FAISS?",
    "top_k": 10,
    "candidates": 100,
    "rerank_depth": 30,
    "filter": None,
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("collection", "other"),
        ("generation", 4),
        ("embedder_model", "e2"),
        ("reranker_model", "r2"),
        ("reranker_model", None),
        ("query", "What is Qdrant?"),
        ("query", "what is faiss?"),  # case is kept: cased models embed it differently
        ("top_k", 5),
        ("candidates", 50),
        ("rerank_depth", 20),
        ("filter", {"lang": "en"}),
        ("mode", "hybrid"),
        ("fusion", {"method": "blend", "weight": 0.4, "rrf_k": 60}),
    ],
)
def test_every_input_of_the_answer_is_in_the_key(field: str, value: object) -> None:
    assert cache_key(**BASE) != cache_key(**{**BASE, field: value})


def test_equivalent_queries_and_filters_share_a_key() -> None:
    spaced = {**BASE, "query": normalize_query("  What   is\tFAISS? \n")}
    assert cache_key(**spaced) == cache_key(**BASE)
    assert normalize_query("\ufb01le  \uff46\uff41\uff49\uff53\uff53") == "file faiss"  # NFKC
    a = cache_key(**{**BASE, "filter": {"a": 1, "b": [1, 2]}})
    b = cache_key(**{**BASE, "filter": {"b": [1, 2], "a": 1}})
    assert a == b
    # without a reranker the rerank depth does not matter
    no_rerank = {**BASE, "reranker_model": None}
    assert cache_key(**no_rerank) == cache_key(**{**no_rerank, "rerank_depth": 5})
    assert cache_key(**BASE).startswith("semsearch:search:v3:docs:")


async def test_lru_evicts_least_recently_used_and_expires() -> None:
    cache = LRUCache(max_entries=2)
    await cache.set("a", b"1", ttl_s=60)
    await cache.set("b", b"2", ttl_s=60)
    assert await cache.get("a") == b"1"  # a is now the most recent
    await cache.set("c", b"3", ttl_s=60)
    assert await cache.get("b") is None
    assert await cache.get("a") == b"1"
    assert await cache.get("c") == b"3"
    await cache.set("short", b"x", ttl_s=-1)  # already expired
    assert await cache.get("short") is None


class _Broken(LRUCache):
    backend = "broken"

    async def get(self, key: str) -> bytes | None:
        raise ConnectionError("down")

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        raise ConnectionError("down")


class _Slow(LRUCache):
    async def get(self, key: str) -> bytes | None:
        await asyncio.sleep(5)
        return b"late"


async def test_safe_cache_turns_failures_and_stalls_into_misses() -> None:
    broken = SafeCache(_Broken(100), timeout_s=0.05)
    assert await broken.get("k") is None
    await broken.set("k", b"v", 10)  # no exception
    slow = SafeCache(_Slow(100), timeout_s=0.05)
    started = asyncio.get_running_loop().time()
    assert await slow.get("k") is None
    assert asyncio.get_running_loop().time() - started < 1


async def test_a_get_waits_for_a_write_of_its_key_and_answers_with_it() -> None:
    inner = LRUCache(10)
    cache = SafeCache(inner, timeout_s=1.0)
    stored: list[str] = []

    async def write(key: str, value: bytes, delay_s: float = 0.05) -> bytes:
        await asyncio.sleep(delay_s)
        await cache.set(key, value, 60)
        stored.append(key)
        return value

    cache.write_later("k", write("k", b"v"))
    cache.write_later("k", write("k", b"again"))  # the same key in flight: dropped
    assert await cache.get("k") == b"v"  # waited for the write, answered with its entry
    assert stored == ["k"] and await inner.get("k") == b"v"
    assert not cache._writing  # finished writes are forgotten

    async def fails() -> bytes:
        raise RuntimeError("encoding failed")

    cache.write_later("bad", fails())
    assert await cache.get("bad") is None  # a failed write is a miss, not an error

    # a write slower than the cache's timeout: the lookup misses in time, the write goes on
    quick = SafeCache(inner, timeout_s=0.05)
    quick.write_later("slow", write("slow", b"late", delay_s=0.5))
    started = asyncio.get_running_loop().time()
    assert await quick.get("slow") is None
    assert asyncio.get_running_loop().time() - started < 0.4
    await asyncio.sleep(0.6)
    assert await inner.get("slow") == b"late"


async def test_close_waits_for_writes_and_cancels_one_that_hangs() -> None:
    inner = LRUCache(10)
    cache = SafeCache(inner, timeout_s=0.05)  # close waits up to 2 x 0.05 + 1 s
    done: list[str] = []

    async def write(key: str, delay_s: float) -> bytes:
        await asyncio.sleep(delay_s)
        done.append(key)
        return b"v"

    cache.write_later("soon", write("soon", 0.1))
    cache.write_later("never", write("never", 60))
    started = asyncio.get_running_loop().time()
    await cache.close()
    assert done == ["soon"]
    assert asyncio.get_running_loop().time() - started < 5
    assert not cache._writing  # the hanging one was cancelled, not left behind


async def test_redis_cache_round_trip_and_ttl(redis_url: str) -> None:
    cache = RedisCache(redis_url, timeout_s=1.0)
    try:
        assert await cache.ping() is True
        await cache.set("semsearch:test:k", b"value", ttl_s=60)
        assert await cache.get("semsearch:test:k") == b"value"
        assert await cache.get("semsearch:test:missing") is None
        await cache.set("semsearch:test:short", b"v", ttl_s=1)
        await asyncio.sleep(1.2)
        assert await cache.get("semsearch:test:short") is None
    finally:
        await cache.close()


async def test_unreachable_redis_is_a_miss_not_an_error() -> None:
    from tests.conftest import free_port

    cache = build_cache(f"redis://127.0.0.1:{free_port()}/0", 10, timeout_s=0.2)
    assert cache.backend == "redis"
    assert await cache.get("k") is None
    await cache.set("k", b"v", 10)
    assert await cache.ping() is False
    await cache.close()


def test_build_cache_picks_lru_without_a_url() -> None:
    assert build_cache(None, 10, 0.05).backend == "memory"
