"""The search result cache: Redis when configured, an in-process LRU otherwise, and the
codec of what it stores.

A cache is an optimisation, never a dependency: every call has a short timeout, and any
failure is counted, logged and treated as a miss.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar, runtime_checkable

import orjson

from app import metrics
from app.breaker import CircuitBreaker
from app.logs import get_logger
from app.types import ChunkMatch, GroupBy, Hit, RankedHit, SearchMode, SearchResult

log = get_logger(__name__)
T = TypeVar("T")

CACHE_KEY_VERSION = "v3"  # bump when the cached payload's shape changes


@runtime_checkable
class ResultCache(Protocol):
    """Bytes in, bytes out, with a time to live."""

    @property
    def backend(self) -> str: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: int) -> None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def cache_key(
    *,
    collection: str,
    generation: int,
    embedder_model: str,
    reranker_model: str | None,
    query: str,
    top_k: int,
    candidates: int,
    rerank_depth: int,
    rerank_weight: float = 1.0,
    filter: dict[str, Any] | None = None,
    mode: str = "dense",
    fusion: dict[str, object] | None = None,
    shape: dict[str, object] | None = None,
    collection_uid: str = "",
) -> str:
    """Everything that changes the answer, hashed. `query` is the normalized text
    (`app.search.query.check_query`); `reranker_model` None means no reranking.
    `collection_uid` tells a collection from one deleted and created again under its name,
    whose generations restart at 1."""
    parts = {
        "collection": collection,
        "collection_uid": collection_uid,
        "generation": generation,
        "embedder": embedder_model,
        "reranker": reranker_model,
        "query": query,
        "top_k": top_k,
        "candidates": candidates,
        "rerank_depth": rerank_depth if reranker_model else 0,
        "rerank_weight": rerank_weight if reranker_model else 0,
        "filter": filter or {},
        "mode": mode,
        "fusion": fusion,
        "shape": shape or {},
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode())
    return f"semsearch:search:{CACHE_KEY_VERSION}:{collection}:{digest.hexdigest()}"


class LRUCache:
    """In-process cache for the embedded default: bounded entries, per-entry expiry."""

    backend = "memory"

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires < time.monotonic():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        self._items[key] = (time.monotonic() + ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._items.clear()


class RedisCache:
    """redis-py asyncio client with short socket timeouts."""

    backend = "redis"

    def __init__(self, url: str, timeout_s: float) -> None:
        import redis.asyncio as redis

        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    async def get(self, key: str) -> bytes | None:
        value = await self._client.get(key)
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        await self._client.set(key, value, ex=ttl_s)

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self._client.aclose()


class SafeCache:
    """Wraps any `ResultCache` so that it can only ever miss, never fail or stall a search:
    each call has a short timeout, and a breaker stops calling a cache that keeps failing."""

    def __init__(
        self, inner: ResultCache, timeout_s: float, breaker: CircuitBreaker | None = None
    ) -> None:
        self.inner = inner
        self._timeout = timeout_s
        self._breaker = breaker
        self._writing: dict[str, asyncio.Task[bytes | None]] = {}  # by key, until written

    @property
    def backend(self) -> str:
        return self.inner.backend

    def write_later(self, key: str, write: Coroutine[Any, Any, bytes | None]) -> None:
        """Run `write`, which stores `key` and returns the entry (None: there is none), after
        the caller's answer is on its way: encoding a ranking and a round trip to Redis are not
        the client's to wait for. Until it is done a `get` of `key` waits for it and answers
        with that entry; `close` waits for every write still running. A second write of a
        key already being written is dropped: it would store the same answer."""
        if key in self._writing:
            write.close()
            return
        task = asyncio.get_running_loop().create_task(write)
        self._writing[key] = task
        task.add_done_callback(lambda done: self._written(key, done))

    def _written(self, key: str, task: asyncio.Task[bytes | None]) -> None:
        del self._writing[key]
        if not task.cancelled() and task.exception() is not None:
            log.warning("cache_write_failed", backend=self.backend, error=repr(task.exception()))

    async def get(self, key: str) -> bytes | None:
        writing = self._writing.get(key)
        if writing is not None:
            # what is being written is the answer: no round trip for it, and no longer a
            # wait than any cache call (asyncio.wait leaves the write running either way)
            await asyncio.wait([writing], timeout=self._timeout)
            written = (
                writing.result()
                if writing.done() and not writing.cancelled() and writing.exception() is None
                else None
            )
            metrics.CACHE_REQUESTS.labels("get", "hit" if written is not None else "miss").inc()
            return written
        try:
            value = await self._call(lambda: self.inner.get(key))
        except Exception as exc:
            metrics.CACHE_REQUESTS.labels("get", "error").inc()
            log.warning("cache_get_failed", backend=self.backend, error=repr(exc))
            return None
        metrics.CACHE_REQUESTS.labels("get", "hit" if value is not None else "miss").inc()
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        try:
            await self._call(lambda: self.inner.set(key, value, ttl_s))
        except Exception as exc:
            metrics.CACHE_REQUESTS.labels("set", "error").inc()
            log.warning("cache_set_failed", backend=self.backend, error=repr(exc))
            return
        metrics.CACHE_REQUESTS.labels("set", "stored").inc()

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def close(self) -> None:
        writes = list(self._writing.values())
        if writes:
            # each write's cache call is bounded by the timeout; encoding it, by little
            _, late = await asyncio.wait(writes, timeout=2 * self._timeout + 1)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.inner.close()

    async def _call(self, work: Callable[[], Awaitable[T]]) -> T:
        async def timed() -> T:
            return await asyncio.wait_for(work(), self._timeout)

        if self._breaker is None:
            return await timed()
        return await self._breaker.call(timed)


def build_cache(
    redis_url: str | None,
    max_entries: int,
    timeout_s: float,
    breaker: CircuitBreaker | None = None,
) -> SafeCache:
    inner: ResultCache = RedisCache(redis_url, timeout_s) if redis_url else LRUCache(max_entries)
    return SafeCache(inner, timeout_s, breaker)


def encode_result(result: SearchResult) -> bytes | None:
    """The cacheable part of an answer (no request id, timings or cached flag): the whole
    shaped ranking, every page of it, without snippets (made per page). None when orjson
    cannot encode it (metadata holding an integer beyond 64 bits, which JSON input allows
    and orjson would read back as a float): such an answer is not cached."""
    try:
        return _encode(result)
    except TypeError:
        return None


def _encode(result: SearchResult) -> bytes:
    return orjson.dumps(
        {
            "results": [
                {
                    "id": r.hit.id,
                    "first_score": r.hit.score,
                    "dense_score": r.hit.dense_score,
                    "lexical_score": r.hit.lexical_score,
                    "text": r.hit.text,
                    "title": r.hit.title,
                    "metadata": r.hit.metadata,
                    "rank": r.rank,
                    "score": r.score,
                    "rerank_score": r.rerank_score,
                    "chunks": [[c.id, c.score, c.rank] for c in r.chunks],
                }
                for r in result.results
            ],
            "reranked": result.reranked,
            "collection": result.collection,
            "index_backend": result.index_backend,
            "generation": result.generation,
            "embedder_model": result.embedder_model,
            "reranker_model": result.reranker_model,
            "mode": result.mode.value,
            "fusion": result.fusion,
            "group_by": result.group_by.value,
        }
    )


def decode_result(payload: bytes) -> SearchResult:
    """An answer stored by `encode_result`, flagged `cached`."""
    data = orjson.loads(payload)
    return SearchResult(
        results=[
            RankedHit(
                Hit(
                    r["id"],
                    r["first_score"],
                    r["text"],
                    r["title"],
                    r["metadata"],
                    r["dense_score"],
                    r["lexical_score"],
                ),
                r["rank"],
                r["score"],
                r["rerank_score"],
                tuple(ChunkMatch(*c) for c in r["chunks"]),
            )
            for r in data["results"]
        ],
        reranked=data["reranked"],
        degraded=[],
        cached=True,
        collection=data["collection"],
        index_backend=data["index_backend"],
        generation=data["generation"],
        embedder_model=data["embedder_model"],
        reranker_model=data["reranker_model"],
        timings_ms={},
        request_id=None,
        mode=SearchMode(data["mode"]),
        fusion=data["fusion"],
        group_by=GroupBy(data["group_by"]),
    )
