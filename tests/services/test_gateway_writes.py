"""Writes over HTTP, in-process: collections created and deleted, documents written, deleted
and read back, write statuses, visibility, limits, a full journal, and a re-created collection
that is never answered from the old one's cache."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import GatewaySettings
from app.models.fake import FakeEmbedder
from services.gateway.main import create_app
from tests.conftest import SMALL_DOCS, build_collection
from tests.services.conftest import asgi_client, assert_error


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> GatewaySettings:
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_BACKEND", "fake")
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_MODEL", "embedder")  # -> model id "fake:embedder"
    monkeypatch.setenv("SEMSEARCH_RERANKER_BACKEND", "fake")

    async def build() -> None:
        index = await build_collection(
            tmp_path / "index", "default", SMALL_DOCS, FakeEmbedder(model_id="fake:embedder")
        )
        await index.close()

    asyncio.run(build())
    return GatewaySettings(index_dir=tmp_path / "index", refresh_interval_s=0.05)


def docs(*ids: str, text: str = "a note about {id} and zebras") -> dict[str, Any]:
    return {"documents": [{"id": i, "text": text.format(id=i)} for i in ids]}


async def until_searchable(client: httpx.AsyncClient, name: str, write_id: str) -> dict[str, Any]:
    for _ in range(200):
        reply = await client.get(f"/v1/collections/{name}/writes/{write_id}")
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        if body["status"] != "pending":
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"write {write_id} stayed pending")


async def search_ids(client: httpx.AsyncClient, query: str, collection: str) -> list[str]:
    reply = await client.post(
        "/v1/search", json={"query": query, "collection": collection, "top_k": 10}
    )
    assert reply.status_code == 200, reply.text
    return [hit["id"] for hit in reply.json()["results"]]


async def test_collection_lifecycle(settings: GatewaySettings) -> None:
    async with asgi_client(create_app(settings)) as client:
        created = await client.put("/v1/collections/notes", json={})
        assert created.status_code == 201, created.text
        info = created.json()
        assert (info["model"], info["generation"], info["documents"]) == ("fake:embedder", 0, 0)
        again = await client.put("/v1/collections/notes", json={"model": "fake:embedder"})
        assert again.status_code == 200 and again.json()["uid"] == info["uid"]  # idempotent
        assert_error(  # a model this gateway cannot embed with
            await client.put("/v1/collections/other", json={"model": "another/model"}),
            409,
            "conflict",
            "model",
        )
        assert_error(
            await client.put("/v1/collections/notes", json={"model": "another/model"}),
            409,
            "conflict",
            "model",
        )
        assert_error(
            await client.delete("/v1/collections/notes"), 422, "invalid_request", "query.confirm"
        )
        assert_error(
            await client.delete("/v1/collections/notes?confirm=false"), 422, "invalid_request"
        )
        gone = await client.delete("/v1/collections/notes?confirm=true")
        assert gone.status_code == 200, gone.text
        assert gone.json() == {"name": "notes", "deleted": True, "failed_writes": 0}
        assert_error(await client.get("/v1/collections/notes"), 404, "not_found")
        assert_error(await client.delete("/v1/collections/notes?confirm=true"), 404, "not_found")
        assert_error(await client.put("/v1/collections/.bad", json={}), 422, "invalid_request")


async def test_a_collection_of_another_model_is_a_conflict(
    settings: GatewaySettings, tmp_path: Path
) -> None:
    other = await build_collection(
        settings.index_dir, "legacy", SMALL_DOCS[:2], FakeEmbedder(model_id="fake:other")
    )
    await other.close()
    async with asgi_client(create_app(settings)) as client:
        assert_error(await client.put("/v1/collections/legacy", json={}), 409, "conflict", "model")
        assert_error(
            await client.post("/v1/collections/legacy/documents", json=docs("x")),
            409,
            "conflict",
            "collection",
        )


async def test_write_search_read_delete(settings: GatewaySettings) -> None:
    async with asgi_client(create_app(settings)) as client:
        assert (await client.put("/v1/collections/notes", json={})).status_code == 201
        written = await client.post(
            "/v1/collections/notes/documents?wait=true",
            json={
                "documents": [
                    {
                        "id": "z1",
                        "text": "zebras graze at dawn",
                        "title": "Zebras",
                        "metadata": {"lang": "en"},
                    },
                    {"id": 7, "text": "an integer id, as JSONL allows"},
                    {"id": "z1", "text": "zebras graze at dusk", "title": "Zebras"},
                ]
            },
        )
        assert written.status_code == 200, written.text
        body = written.json()
        assert body["status"] == "searchable" and body["generation"] == 1, body
        assert body["items"] == 3 and body["kind"] == "upsert"
        assert await search_ids(client, "zebras dusk", "notes") == ["z1", "7"]
        document = (await client.get("/v1/collections/notes/documents/z1")).json()
        assert document["searchable"] is True and document["generation"] == 1
        assert document["text"] == "zebras graze at dusk"  # the last occurrence won
        assert document["metadata"] == {}
        info = (await client.get("/v1/collections/notes")).json()
        assert (info["documents"], info["chunks"], info["lexical"]) == (2, 2, True)
        assert info["last_publish"] is not None and info["pending_writes"] == 0

        deleted = await client.request(
            "DELETE", "/v1/collections/notes/documents", json={"ids": ["z1", "nope"]}
        )
        assert deleted.status_code == 202, deleted.text
        # 404 as soon as the deletion is acknowledged, searchable or not
        assert_error(await client.get("/v1/collections/notes/documents/z1"), 404, "not_found")
        status = await until_searchable(client, "notes", deleted.json()["write_id"])
        assert status["status"] == "searchable" and status["generation"] == 2
        assert await search_ids(client, "zebras dusk", "notes") == ["7"]
        assert_error(await client.get("/v1/collections/notes/documents/z1"), 404, "not_found")
        assert_error(
            await client.get("/v1/collections/notes/writes/unknown"), 404, "not_found", "write_id"
        )


async def test_a_write_is_pending_until_the_next_publish(settings: GatewaySettings) -> None:
    slow = settings.model_copy(update={"refresh_interval_s": 3600.0})
    async with asgi_client(create_app(slow)) as client:
        first = await client.post("/v1/collections/default/documents?wait=true", json=docs("a"))
        assert first.json()["status"] == "searchable"  # wait publishes at once
        second = await client.post("/v1/collections/default/documents", json=docs("b"))
        assert second.status_code == 202 and second.json()["status"] == "pending"
        await asyncio.sleep(0.3)  # applied, not published: the refresh interval is an hour
        status = await client.get(f"/v1/collections/default/writes/{second.json()['write_id']}")
        assert status.json()["status"] == "pending"
        pending = (await client.get("/v1/collections/default/documents/b")).json()
        assert (pending["searchable"], pending["text"]) == (False, "a note about b and zebras")
        assert pending["write_id"] == second.json()["write_id"]
        assert "b" not in await search_ids(client, "note about b zebras", "default")
        waited = await client.post(
            "/v1/collections/default/documents?wait=true&timeout_ms=5000", json=docs("c")
        )
        assert waited.json()["status"] == "searchable"
        found = await search_ids(client, "note about b zebras", "default")
        assert {"b", "c"} <= set(found)  # one publish made both searchable


@pytest.mark.parametrize(
    ("body", "status", "error_type", "field"),
    [
        ({"documents": []}, 422, "invalid_request", "documents"),
        ({"documents": [{"id": "a", "text": "  "}]}, 422, "invalid_request", "documents[0].text"),
        (
            {"documents": [{"id": "a", "text": "ok"}, {"id": "b#1", "text": "x"}]},
            422,
            "invalid_request",
            "documents[1].id",
        ),
        ({"documents": [{"id": "", "text": "x"}]}, 422, "invalid_request", "documents[0].id"),
        ({"documents": [{"id": True, "text": "x"}]}, 422, "invalid_request", "documents[0].id"),
        ({"documents": [{"text": "x"}]}, 422, "invalid_request", "documents[0].id"),
        (
            {"documents": [{"id": "a", "text": "x", "metadata": []}]},
            422,
            "invalid_request",
            "documents[0].metadata",
        ),
        (
            {"documents": [{"id": "a", "text": "x", "extra": 1}]},
            422,
            "invalid_request",
            "documents[0].extra",
        ),
        (
            {"documents": [{"id": "a", "text": "\ud800"}]},
            422,
            "invalid_request",
            "documents[0].text",
        ),
        (docs(*[f"d{i}" for i in range(6)]), 413, "payload_too_large", "documents"),
        (
            {"documents": [{"id": "a", "text": "x" * 101}]},
            413,
            "payload_too_large",
            "documents[0].text",
        ),
    ],
)
async def test_bad_writes_are_a_clear_4xx(
    settings: GatewaySettings, body: dict[str, Any], status: int, error_type: str, field: str
) -> None:
    limited = settings.model_copy(
        update={"max_documents_per_request": 5, "max_document_chars": 100}
    )
    async with asgi_client(create_app(limited)) as client:
        reply = await client.post(  # ASCII JSON: a lone surrogate travels as its escape
            "/v1/collections/default/documents",
            content=json.dumps(body),
            headers={"content-type": "application/json"},
        )
        assert_error(reply, status, error_type, field)
        assert_error(
            await client.post("/v1/collections/missing/documents", json=docs("a")),
            404,
            "not_found",
        )
        assert_error(
            await client.request("DELETE", "/v1/collections/default/documents", json={"ids": []}),
            422,
            "invalid_request",
            "ids",
        )


async def test_a_full_journal_answers_429_with_retry_after(settings: GatewaySettings) -> None:
    tight = settings.model_copy(update={"refresh_interval_s": 3600.0, "write_journal_max_bytes": 1})
    async with asgi_client(create_app(tight)) as client:
        first = await client.post("/v1/collections/default/documents?wait=true", json=docs("a"))
        assert first.json()["status"] == "searchable"  # the journal is empty again
        assert (
            await client.post("/v1/collections/default/documents", json=docs("b"))
        ).status_code == 202
        refused = await client.post("/v1/collections/default/documents", json=docs("c"))
        assert_error(refused, 429, "overloaded")
        assert int(refused.headers["retry-after"]) >= 1


async def test_a_recreated_collection_is_never_answered_from_the_old_one(
    settings: GatewaySettings,
) -> None:
    query = {"query": "zebras of the savanna", "collection": "zoo"}
    async with asgi_client(create_app(settings)) as client:
        await client.put("/v1/collections/zoo", json={})
        await client.post(
            "/v1/collections/zoo/documents?wait=true",
            json=docs("old", text="zebras of the savanna, the old collection"),
        )
        first = (await client.post("/v1/search", json=query)).json()
        assert (await client.post("/v1/search", json=query)).json()["cached"] is True
        uid = (await client.get("/v1/collections/zoo")).json()["uid"]
        await client.delete("/v1/collections/zoo?confirm=true")
        recreated = (await client.put("/v1/collections/zoo", json={})).json()
        assert recreated["uid"] != uid and recreated["generation"] == 0
        await client.post(
            "/v1/collections/zoo/documents?wait=true",
            json=docs("new", text="zebras of the savanna, the new collection"),
        )
        second = (await client.post("/v1/search", json=query)).json()
    assert first["index"]["generation"] == second["index"]["generation"] == 1
    assert second["cached"] is False
    assert [r["id"] for r in second["results"]] == ["new"]


async def test_a_collection_recreated_by_another_process_is_reopened(
    settings: GatewaySettings,
) -> None:
    """Another process (the CLI) deletes the collection and indexes a new one under its name:
    the gateway's reload must serve the new one, though both are at generation 1."""
    from app.index.faiss.layout import CollectionLayout

    query = {"query": "Berlin capital Germany", "collection": "default", "rerank": False}
    async with asgi_client(create_app(settings)) as client:
        before = (await client.post("/v1/search", json=query)).json()
        assert before["results"][0]["id"] == "berlin"
        CollectionLayout(settings.index_dir, "default").remove()
        replacement = await build_collection(
            settings.index_dir,
            "default",
            [SMALL_DOCS[2]],
            FakeEmbedder(model_id="fake:embedder"),
        )
        await replacement.close()
        assert (await client.post("/admin/reload")).status_code == 200
        after = (await client.post("/v1/search", json=query)).json()
    assert after["index"]["generation"] == 1
    assert after["cached"] is False
    assert [r["id"] for r in after["results"]] == ["cats"]
