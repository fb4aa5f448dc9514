"""Writer leases: replicas (two WriterLeases on one real Redis) take turns on a collection;
a holder that dies loses the lease after its TTL."""

from __future__ import annotations

import asyncio

import pytest

from app.errors import Unavailable
from app.ingest.lease import WriterLeases


async def test_replicas_take_turns(redis_url: str) -> None:
    first, second = WriterLeases(redis_url, ttl_s=5), WriterLeases(redis_url, ttl_s=5)
    inside: list[str] = []
    overlaps = 0

    async def work(leases: WriterLeases, name: str) -> None:
        nonlocal overlaps
        for _ in range(5):
            async with leases.hold("turns"):
                inside.append(name)
                overlaps += len(inside) > 1
                await asyncio.sleep(0.01)
                inside.remove(name)

    await asyncio.gather(work(first, "a"), work(second, "b"))
    assert overlaps == 0
    async with first.hold("other"), second.hold("another"):  # per collection
        pass
    await first.close()
    await second.close()


async def test_a_lease_nobody_releases_expires(redis_url: str) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_url)
    await client.set("semsearch:writer:stuck", "a replica that died", px=300)
    waiting = WriterLeases(redis_url, ttl_s=5, wait_s=0.05)
    with pytest.raises(Unavailable, match="another gateway replica"):
        async with waiting.hold("stuck"):
            pass
    patient = WriterLeases(redis_url, ttl_s=5, wait_s=2)
    async with patient.hold("stuck"):
        assert (await client.get("semsearch:writer:stuck")) != b"a replica that died"
    assert await client.get("semsearch:writer:stuck") is None  # released by its holder
    await client.aclose()
    await waiting.close()
    await patient.close()
