"""Whose turn it is to write a collection.

Writes are staged, then published as a generation; two writers staging the same generation
at once would publish each other's half-done work. Within a process, one asyncio lock per
collection orders the writer and a deletion. Across processes on one machine, FAISS's file
lock does (`CollectionLayout.writer_lock`). Across gateway replicas writing one Qdrant, a
lease in Redis does: `SET key token NX PX ttl`, renewed while held, released only by its
holder (compare-and-delete), so replicas take turns, a batch at a time; a replica that dies
holding it loses it after `ttl`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from app.errors import Unavailable
from app.logs import get_logger

log = get_logger(__name__)

# Deletes the key only if it still holds our token: a lease that expired and went to another
# replica is not ours to release.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


class WriterLeases:
    """One writer per collection at a time: in this process always, across replicas when a
    Redis is given (`redis_url`)."""

    def __init__(self, redis_url: str | None, ttl_s: float, wait_s: float = 5.0) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._ttl_ms = int(ttl_s * 1000)
        self._wait_s = wait_s
        self._redis: Any = None
        if redis_url:
            import redis.asyncio as redis

            self._redis = redis.Redis.from_url(redis_url, socket_timeout=5)

    @property
    def shared(self) -> bool:
        """True when replicas coordinate through Redis."""
        return self._redis is not None

    def local(self, collection: str) -> asyncio.Lock:
        """This process's turn alone (for work on its own copies, like following the primary
        into its fallback copy): keeps this process's writer out, not other replicas."""
        return self._locks.setdefault(collection, asyncio.Lock())

    @asynccontextmanager
    async def hold(self, collection: str) -> AsyncIterator[None]:
        """Hold collection `collection`'s writer lease for the block.

        Raises:
            Unavailable: another replica kept it past `wait_s`, or Redis did not answer (the
                writes stay journaled and are tried again).
        """
        async with self.local(collection):
            if self._redis is None:
                yield
                return
            key = f"semsearch:writer:{collection}"
            token = uuid.uuid4().hex
            await self._acquire(key, token)
            renewing = asyncio.create_task(self._renew(key, token))
            try:
                yield
            finally:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
                try:
                    await self._redis.eval(_RELEASE, 1, key, token)
                except Exception as exc:  # it expires by itself
                    log.warning(
                        "writer_lease_release_failed", collection=collection, error=repr(exc)
                    )

    async def _acquire(self, key: str, token: str) -> None:
        deadline = asyncio.get_running_loop().time() + self._wait_s
        delay = 0.02
        while True:
            try:
                if await self._redis.set(key, token, nx=True, px=self._ttl_ms):
                    return
            except Exception as exc:
                raise Unavailable(f"the writer lease (redis) did not answer: {exc!r}") from exc
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(
                    f"another gateway replica holds the writer lease {key!r}", retry_after_s=1
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _renew(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)
            try:
                if not await self._redis.eval(_RENEW, 1, key, token, self._ttl_ms):
                    log.error("writer_lease_lost", key=key)
                    return
            except Exception as exc:
                log.warning("writer_lease_renew_failed", key=key, error=repr(exc))

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
