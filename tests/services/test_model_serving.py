"""The embedder and reranker services on real (tiny) models: batching, TEI shapes, dimensions,
timing headers, overload, health, client disconnects."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.config import EmbedderSettings, RerankerSettings
from app.errors import ClientDisconnected
from services.embedder.main import create_app as embedder_app
from services.http import unless_disconnected
from services.reranker.main import create_app as reranker_app
from tests.services.conftest import asgi_client, assert_error


def tiny_embedder(model: Path, **overrides: Any):  # type: ignore[no-untyped-def]
    return embedder_app(EmbedderSettings(model=str(model), **overrides))


async def test_dimensions_shorten_and_renormalize(tiny_bi_encoder: Path) -> None:
    async with asgi_client(tiny_embedder(tiny_bi_encoder)) as client:
        full = (await client.post("/v1/embeddings", json={"input": "cats purr"})).json()
        short = (
            await client.post("/v1/embeddings", json={"input": "cats purr", "dimensions": 8})
        ).json()
        vector = np.array(short["data"][0]["embedding"])
        assert vector.shape == (8,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
        head = np.array(full["data"][0]["embedding"][:8])
        np.testing.assert_allclose(vector, head / np.linalg.norm(head), atol=1e-6)
        too_many = await client.post("/v1/embeddings", json={"input": "x", "dimensions": 33})
        assert_error(too_many, 422, "invalid_request", "dimensions")


async def test_tei_embed_shape_normalize_and_truncation(tiny_bi_encoder: Path) -> None:
    async with asgi_client(tiny_embedder(tiny_bi_encoder)) as client:
        reply = await client.post("/embed", json={"inputs": ["a", "b c"]})
        assert reply.status_code == 200
        vectors = np.array(reply.json())
        assert vectors.shape == (2, 32)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        single = await client.post("/embed", json={"inputs": "a", "normalize": False})
        assert np.array(single.json()).shape == (1, 32)

        long = "zebra " * 20 + "word " * 150 + "rocket " * 20
        assert_error(
            await client.post("/embed", json={"inputs": long}), 422, "input_too_long", "inputs[0]"
        )
        right = await client.post("/embed", json={"inputs": long, "truncate": True})
        left = await client.post(
            "/embed", json={"inputs": long, "truncate": True, "truncation_direction": "Left"}
        )
        assert right.status_code == left.status_code == 200
        assert right.json() != left.json()


async def test_tei_embed_takes_the_fields_tei_clients_send(tiny_bi_encoder: Path) -> None:
    app = tiny_embedder(
        tiny_bi_encoder, query_prefix="query: ", passage_prefix="passage: ", dtype="float32"
    )
    async with asgi_client(app) as client:

        async def openai(input_type: str) -> list[float]:
            body = {"input": "cats purr", "input_type": input_type}
            reply = await client.post("/v1/embeddings", json=body)
            embedding: list[float] = reply.json()["data"][0]["embedding"]
            return embedding

        for prompt in ("query", "passage"):
            reply = await client.post("/embed", json={"inputs": "cats purr", "prompt_name": prompt})
            assert reply.status_code == 200, reply.text
            np.testing.assert_allclose(reply.json()[0], await openai(prompt), atol=1e-6)
        assert_error(
            await client.post("/embed", json={"inputs": "x", "prompt_name": "document"}),
            422,
            "invalid_request",
            "prompt_name",
        )

        short = await client.post("/embed", json={"inputs": "cats purr", "dimensions": 8})
        assert short.status_code == 200, short.text
        assert np.linalg.norm(short.json()[0]) == pytest.approx(1.0, abs=1e-5)
        assert len(short.json()[0]) == 8

        long = "zebra " * 20 + "word " * 150 + "rocket " * 20
        for direction in ("left", "right"):  # huggingface_hub 2.x spells them in lower case
            body = {"inputs": long, "truncate": True, "truncation_direction": direction}
            reply = await client.post("/embed", json=body)
            assert reply.status_code == 200, reply.text
            title = {**body, "truncation_direction": direction.title()}
            assert reply.json() == (await client.post("/embed", json=title)).json()


async def test_info_reports_model_window_and_batching_limits(tiny_bi_encoder: Path) -> None:
    app = tiny_embedder(tiny_bi_encoder, max_batch_tokens=4096, max_wait_ms=5)
    async with asgi_client(app) as client:
        info = (await client.get("/info")).json()
    assert info["dimension"] == 32 and info["max_input_tokens"] == 128
    # auto: float32, or on a CPU with bf16 units float32 below 512 padded tokens, bf16 above
    assert info["backend"] in ("torch-float32", "torch-float32+bfloat16>=256")
    assert info["device"] == "cpu"
    assert (info["max_batch_tokens"], info["max_wait_ms"], info["max_batch_size"]) == (4096, 5, 256)


def embedding_batches(metrics: str) -> float:
    """Forward passes so far (the counter is process-wide: compare before and after)."""
    for line in metrics.splitlines():
        if line.startswith('semsearch_batch_size_count{kind="embedding"}'):
            return float(line.split()[-1])
    return 0.0


async def test_concurrent_requests_are_batched_and_timed(tiny_bi_encoder: Path) -> None:
    async with asgi_client(tiny_embedder(tiny_bi_encoder, max_wait_ms=20)) as client:
        before = embedding_batches((await client.get("/metrics")).text)
        replies = await asyncio.gather(
            *(
                client.post("/v1/embeddings", json={"input": f"query {i}", "input_type": "query"})
                for i in range(16)
            )
        )
        assert all(r.status_code == 200 for r in replies)
        assert all(float(r.headers["x-compute-time"]) > 0 for r in replies)
        assert all(float(r.headers["x-queue-time"]) >= 0 for r in replies)
        metrics = (await client.get("/metrics")).text
    batches = embedding_batches(metrics) - before
    assert 1 <= batches < 16  # 16 concurrent single-text requests did not take 16 passes
    assert 'semsearch_batch_queue_seconds_bucket{kind="embedding"' in metrics
    assert "semsearch_batch_queue_depth" in metrics


async def test_full_queue_answers_429_with_retry_after(tiny_bi_encoder: Path) -> None:
    app = tiny_embedder(
        tiny_bi_encoder, max_queue_items=4, max_items_per_request=4, max_batch_size=1
    )
    async with asgi_client(app) as client:
        model = app.state.model
        gate = threading.Event()
        engine = model._loaded.engine

        def slow(batch: Any) -> Any:
            gate.wait(10)
            return engine(batch)

        model._loaded = dataclasses.replace(model._loaded, engine=slow)
        first = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": ["a"]}))
        await asyncio.sleep(0.1)  # "a" is on the model, held by the gate
        queued = asyncio.ensure_future(
            client.post("/v1/embeddings", json={"input": ["b", "c", "d", "e"]})
        )
        await asyncio.sleep(0.1)
        refused = await client.post("/v1/embeddings", json={"input": ["f"]})
        assert_error(refused, 429, "overloaded")
        assert int(refused.headers["retry-after"]) >= 1
        gate.set()
        assert (await first).status_code == 200
        assert (await queued).status_code == 200


async def test_health_turns_503_when_the_model_keeps_failing(tiny_cross_encoder: Path) -> None:
    app = reranker_app(RerankerSettings(model=str(tiny_cross_encoder), max_length=64))
    async with asgi_client(app) as client:
        assert (await client.get("/health")).status_code == 200
        model = app.state.model

        def broken(batch: Any) -> Any:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

        model._loaded = dataclasses.replace(model._loaded, engine=broken)
        for _ in range(3):
            reply = await client.post("/rerank", json={"query": "q", "documents": ["d"]})
            assert_error(reply, 500, "model_failed")
        health = await client.get("/health")
        assert_error(health, 503, "unhealthy")
        assert "3 failed batches" in health.json()["error"]["message"]


async def test_work_is_cancelled_when_the_client_disconnects() -> None:
    class GoneRequest:
        async def receive(self) -> dict[str, str]:
            await asyncio.sleep(0.01)
            return {"type": "http.disconnect"}

    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def work() -> str:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    with pytest.raises(ClientDisconnected):
        await unless_disconnected(GoneRequest(), work())  # type: ignore[arg-type]
    await asyncio.wait_for(cancelled.wait(), 1)

    class StaysRequest:
        async def receive(self) -> dict[str, str]:
            await asyncio.sleep(10)
            return {"type": "http.disconnect"}

    async def quick() -> str:
        return "answer"

    assert await unless_disconnected(StaysRequest(), quick()) == "answer"  # type: ignore[arg-type]


async def test_a_caller_that_would_time_out_in_the_queue_gets_429_at_once(
    tiny_bi_encoder: Path,
) -> None:
    app = tiny_embedder(tiny_bi_encoder, max_batch_size=1)
    async with asgi_client(app) as client:
        assert (await client.post("/v1/embeddings", json={"input": ["warm"]})).status_code == 200
        model = app.state.model
        gate = threading.Event()
        engine = model._loaded.engine

        def slow(batch: Any) -> Any:
            gate.wait(10)
            return engine(batch)

        model._loaded = dataclasses.replace(model._loaded, engine=slow)
        first = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": ["a"]}))
        await asyncio.sleep(0.1)  # "a" is on the model, held by the gate
        refused = await client.post(
            "/v1/embeddings", json={"input": ["b"]}, headers={"x-request-timeout-ms": "0"}
        )
        assert_error(refused, 429, "overloaded")
        assert "the caller waits 0 ms" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) >= 1
        patient = asyncio.ensure_future(
            client.post(
                "/v1/embeddings", json={"input": ["c"]}, headers={"x-request-timeout-ms": "60000"}
            )
        )
        await asyncio.sleep(0.05)
        gate.set()
        assert (await first).status_code == 200
        assert (await patient).status_code == 200
        garbled = await client.post(
            "/v1/embeddings", json={"input": ["d"]}, headers={"x-request-timeout-ms": "soon"}
        )
        assert_error(garbled, 422, "invalid_request", "header.x-request-timeout-ms")
        operation = (await client.get("/openapi.json")).json()["paths"]["/v1/embeddings"]["post"]
        assert {"name": "x-request-timeout-ms", "in": "header"}.items() <= {
            **next(p for p in operation["parameters"] if p["name"] == "x-request-timeout-ms")
        }.items()
        assert "Retry-After" in operation["responses"]["429"]["headers"]
