"""Several gateway replicas writing one Qdrant collection (here: two gateways in one process,
on one embedded Qdrant, taking turns through a writer lease in a real Redis): every replica
accepts writes, every replica sees all of them, each document once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.config import GatewaySettings
from services.gateway.main import create_app
from tests.services.conftest import asgi_client


@pytest.fixture
def replica_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str
) -> list[GatewaySettings]:
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_BACKEND", "fake")
    monkeypatch.setenv("SEMSEARCH_RERANKER_BACKEND", "fake")
    shared = {
        "index_backend": "qdrant",
        "qdrant_path": tmp_path / "qdrant",
        "redis_url": redis_url,
        "default_collection": "shared",
        "refresh_interval_s": 0.05,
        "index_reload_interval_s": 0.1,
    }
    return [
        GatewaySettings(
            index_dir=tmp_path / f"replica-{n}",
            write_journal_dir=tmp_path / f"journal-{n}",
            fallback_index_dir=tmp_path / f"fallback-{n}",  # each replica's own disk
            fallback_sync_interval_s=0.2,
            **shared,  # type: ignore[arg-type]
        )
        for n in range(2)
    ]


async def test_every_replica_accepts_writes_and_sees_all_of_them(
    replica_settings: list[GatewaySettings],
) -> None:
    first, second = replica_settings
    async with (
        asgi_client(create_app(first), wait_ready=False) as a,
        asgi_client(create_app(second), wait_ready=False) as b,
    ):
        assert (await a.put("/v1/collections/shared", json={})).status_code == 201
        assert (await b.put("/v1/collections/shared", json={})).status_code == 200  # the same

        async def write(client: object, replica: str, batch: int) -> str:
            documents = [
                {"id": f"{replica}-{batch}-{i}", "text": f"replica {replica} note {batch} {i}"}
                for i in range(5)
            ]
            reply = await client.post(  # type: ignore[attr-defined]
                "/v1/collections/shared/documents", json={"documents": documents}
            )
            assert reply.status_code == 202, reply.text
            return str(reply.json()["write_id"])

        writes = await asyncio.gather(
            *(write(a, "a", n) for n in range(6)), *(write(b, "b", n) for n in range(6))
        )
        clients = [a] * 6 + [b] * 6
        for client, write_id in zip(clients, writes, strict=True):
            for _ in range(300):
                status = (await client.get(f"/v1/collections/shared/writes/{write_id}")).json()
                if status["status"] == "searchable":
                    break
                assert status["status"] == "pending", status
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"write {write_id} stayed pending")
        for _ in range(100):  # each replica reloads the last publish within its interval
            infos = [(await c.get("/v1/collections/shared")).json() for c in (a, b)]
            if infos[0]["generation"] == infos[1]["generation"]:
                break
            await asyncio.sleep(0.05)
        assert infos[0]["chunks"] == infos[1]["chunks"] == 60  # each document once
        for client in (a, b):  # both replicas find what either wrote
            for doc_id in ("a-0-0", "b-5-4"):
                document = (await client.get(f"/v1/collections/shared/documents/{doc_id}")).json()
                assert document["searchable"] is True, document
            reply = await client.post(
                "/v1/search",
                json={
                    "query": "replica b note 5",
                    "collection": "shared",
                    "rerank": False,
                    "mode": "lexical",
                    "top_k": 100,
                },
            )
            ids = [hit["id"] for hit in reply.json()["results"]]
            assert len(ids) == len(set(ids)) and {f"b-5-{i}" for i in range(5)} <= set(ids)
        # each replica's fallback copy follows Qdrant: it gets what the other one wrote too
        for settings in (first, second):
            await until_followed(settings, 60)


async def until_followed(settings: GatewaySettings, records: int) -> None:
    from app.index.faiss.layout import CollectionLayout

    assert settings.fallback_index_dir is not None
    layout = CollectionLayout(settings.fallback_index_dir, "shared")
    for _ in range(100):
        generation = layout.current_generation()
        if generation and layout.read_manifest(generation).count == records:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the fallback copy in {layout.root} did not follow Qdrant")
