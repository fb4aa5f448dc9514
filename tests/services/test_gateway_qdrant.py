"""The Qdrant backend wired from settings, as the compose stack runs it (Qdrant primary, FAISS
fallback copy), here in Qdrant's embedded local mode: the indexing CLI writes both, the gateway
serves Qdrant, picks up new generations, and falls back to FAISS when Qdrant fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.config import GatewaySettings
from app.errors import IndexUnavailable
from app.index.collections import collection_names, open_collection
from app.index.fallback import FallbackIndex
from app.index.qdrant.index import QdrantIndex
from app.ingest.indexer import index_documents
from app.models.fake import FakeEmbedder
from app.types import Document, InputType
from services.gateway.main import create_app
from tests.conftest import SMALL_DOCS
from tests.services.conftest import asgi_client


@pytest.fixture
def qdrant_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> GatewaySettings:
    for name, value in {
        "SEMSEARCH_EMBEDDER_BACKEND": "fake",
        "SEMSEARCH_EMBEDDER_MODEL": "embedder",
        "SEMSEARCH_RERANKER_BACKEND": "fake",
        "SEMSEARCH_INDEX_BACKEND": "qdrant",
        "SEMSEARCH_QDRANT_PATH": str(tmp_path / "qdrant"),
        "SEMSEARCH_INDEX_DIR": str(tmp_path / "index"),
        "SEMSEARCH_FALLBACK_INDEX_DIR": str(tmp_path / "fallback"),
        "SEMSEARCH_INDEX_RELOAD_INTERVAL_S": "3600",
    }.items():
        monkeypatch.setenv(name, value)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": d.id, "text": d.text, "title": d.title, "metadata": d.metadata})
            + "\n"
            for d in SMALL_DOCS
        )
    )
    result = CliRunner().invoke(
        cli, ["index", str(corpus), "--collection", "default", "--chunk-tokens", "0"]
    )
    assert result.exit_code == 0, result.output
    assert "qdrant at" in result.output and "added" in result.output
    return GatewaySettings()


async def test_cli_writes_qdrant_and_the_fallback_copy(qdrant_env: GatewaySettings) -> None:
    assert await collection_names(qdrant_env) == ["default"]
    index = await open_collection(qdrant_env, "default")
    try:
        assert isinstance(index, FallbackIndex) and isinstance(index.primary, QdrantIndex)
        assert (index.primary.generation, index.fallback.generation) == (1, 1)
        assert await index.primary.count() == await index.fallback.count() == len(SMALL_DOCS)
    finally:
        await index.close()


async def test_gateway_serves_qdrant_generations_and_falls_back_to_faiss(
    qdrant_env: GatewaySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with asgi_client(create_app(qdrant_env)) as client:
        body = (await client.post("/v1/search", json={"query": "capital of France"})).json()
        assert body["index"] == {"backend": "qdrant", "collection": "default", "generation": 1}
        assert body["results"][0]["id"] == "paris" and body["degraded"] == []
        ready = (await client.get("/ready")).json()["components"]["collections"]["default"]
        assert (ready["backend"], ready["fallback"]) == ("qdrant", "faiss")

        # A run that has staged but not published changes nothing searches see.
        embedder = FakeEmbedder(model_id="fake:embedder")
        writer = await open_collection(
            qdrant_env, "default", create=("fake:embedder", embedder.info.dimension or 0)
        )
        oslo = Document("oslo", "Oslo is the capital of Norway.", "Oslo")
        vectors = (await embedder.embed([oslo.text], InputType.PASSAGE)).vectors
        await writer.upsert([oslo], vectors)
        body = (await client.post("/v1/search", json={"query": "Oslo Norway"})).json()
        assert "oslo" not in [r["id"] for r in body["results"]]
        assert (await client.post("/admin/reload")).json() == {"reloaded": []}
        report = await index_documents([oslo], writer, embedder)  # the run completes
        await writer.close()
        assert report.generation == 2

        assert (await client.post("/admin/reload")).json() == {"reloaded": ["default"]}
        body = (await client.post("/v1/search", json={"query": "Oslo Norway"})).json()
        assert body["index"]["generation"] == 2 and body["results"][0]["id"] == "oslo"

        async def down(*args: object, **kwargs: object) -> None:
            raise IndexUnavailable("qdrant is down")

        monkeypatch.setattr(QdrantIndex, "search", down)
        body = (await client.post("/v1/search", json={"query": "Norway Oslo"})).json()
        assert body["degraded"] == ["index"] and body["index"]["backend"] == "faiss"
        assert body["results"][0]["id"] == "oslo"  # the fallback copy has generation 2 too


async def test_a_missing_fallback_copy_leaves_the_primary_serving(
    qdrant_env: GatewaySettings, tmp_path: Path
) -> None:
    settings = qdrant_env.model_copy(update={"fallback_index_dir": tmp_path / "elsewhere"})
    index = await open_collection(settings, "default")
    try:
        assert isinstance(index, QdrantIndex) and index.generation == 1
    finally:
        await index.close()


async def test_qdrant_unreachable_at_start_the_fallback_copy_serves(
    qdrant_env: GatewaySettings,
) -> None:
    from harness.processes import free_port

    nobody = f"http://127.0.0.1:{free_port()}"  # connection refused: a real network failure
    settings = qdrant_env.model_copy(update={"qdrant_url": nobody})
    async with asgi_client(create_app(settings)) as client:
        body = (await client.post("/v1/search", json={"query": "capital of France"})).json()
        assert body["degraded"] == ["index"] and body["index"]["backend"] == "faiss"
        assert body["results"][0]["id"] == "paris"
        assert (await client.post("/admin/reload")).json() == {"reloaded": []}
        metrics = (await client.get("/metrics")).text
        assert f'semsearch_index_documents{{collection="default"}} {len(SMALL_DOCS)}.0' in metrics


async def test_qdrant_answering_again_takes_over_from_the_fallback(
    qdrant_env: GatewaySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.index.qdrant.index as qdrant_module

    async def down(*args: object) -> None:
        raise IndexUnavailable("qdrant: connection refused")

    real_meta = qdrant_module.read_meta
    monkeypatch.setattr(qdrant_module, "read_meta", down)
    monkeypatch.setattr("app.index.collections.list_collections", down)
    async with asgi_client(create_app(qdrant_env)) as client:
        body = (await client.post("/v1/search", json={"query": "capital of France"})).json()
        assert body["degraded"] == ["index"] and body["index"]["backend"] == "faiss"

        monkeypatch.setattr(qdrant_module, "read_meta", real_meta)  # Qdrant is back
        assert (await client.post("/admin/reload")).json() == {"reloaded": ["default"]}
        body = (await client.post("/v1/search", json={"query": "France capital"})).json()
        assert body["degraded"] == [] and body["index"] == {
            "backend": "qdrant",
            "collection": "default",
            "generation": 1,
        }
