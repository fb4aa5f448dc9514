"""The embedder service in-process: OpenAI/NVIDIA shapes, limits, errors, ops endpoints."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from app.config import EmbedderSettings
from services.embedder.main import create_app
from tests.services.conftest import asgi_client, assert_error


def fake_app(**overrides: object):  # type: ignore[no-untyped-def]
    return create_app(EmbedderSettings(backend="fake", model="tiny", **overrides))


async def test_openai_shape_with_a_list_and_a_string() -> None:
    async with asgi_client(fake_app()) as client:
        reply = await client.post(
            "/v1/embeddings", json={"input": ["a b", "c"], "model": "fake:tiny"}
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["object"] == "list"
        assert body["model"] == "fake:tiny"
        assert [d["index"] for d in body["data"]] == [0, 1]
        assert all(d["object"] == "embedding" and len(d["embedding"]) == 64 for d in body["data"])
        assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
        assert reply.headers["x-request-id"]

        single = await client.post("/v1/embeddings", json={"input": "a b"})
        assert single.json()["data"][0]["embedding"] == body["data"][0]["embedding"]


async def test_base64_encoding_matches_float() -> None:
    async with asgi_client(fake_app()) as client:
        floats = (await client.post("/v1/embeddings", json={"input": "hello world"})).json()
        packed = (
            await client.post(
                "/v1/embeddings", json={"input": "hello world", "encoding_format": "base64"}
            )
        ).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, floats["data"][0]["embedding"], atol=1e-7)


async def test_nvidia_input_type_and_truncate() -> None:
    async with asgi_client(fake_app()) as client:
        ok = await client.post(
            "/v1/embeddings", json={"input": ["q"], "input_type": "query", "truncate": "END"}
        )
        assert ok.status_code == 200
        long = " ".join(["word"] * 300)
        refused = await client.post("/v1/embeddings", json={"input": ["ok", long]})
        assert_error(refused, 422, "input_too_long", "input[1]")
        assert "300 tokens" in refused.json()["error"]["message"]
        cut = await client.post("/v1/embeddings", json={"input": [long], "truncate": "START"})
        assert cut.status_code == 200
        assert cut.json()["usage"]["prompt_tokens"] == 256
        bad = await client.post("/v1/embeddings", json={"input": "q", "input_type": "document"})
        assert_error(bad, 422, "invalid_request", "input_type")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input": []}, "input"),
        ({"input": [1, 2]}, "input[0]"),
        ({}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
async def test_invalid_bodies_are_422_naming_the_field(body: dict[str, object], field: str) -> None:
    async with asgi_client(fake_app()) as client:
        reply = await client.post("/v1/embeddings", json=body)
    assert reply.status_code == 422
    assert reply.json()["error"]["field"].startswith(field.split(".")[0])


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/embeddings", '{"input": "hello \\ud800 world"}', "input"),
        ("/v1/embeddings", '{"input": ["ok", "\\udc00"]}', "input[1]"),
        ("/embed", '{"inputs": "hello \\ud800"}', "inputs"),
        ("/embed", '{"inputs": ["ok", "ok", "\\ud800"]}', "inputs[2]"),
    ],
)
async def test_a_lone_surrogate_is_422_naming_the_field(path: str, body: str, field: str) -> None:
    async with asgi_client(fake_app()) as client:
        reply = await client.post(path, content=body, headers={"content-type": "application/json"})
    assert_error(reply, 422, "invalid_request", field)
    assert "surrogate" in reply.json()["error"]["message"]


async def test_blank_texts_embed_as_the_models_do() -> None:
    # The in-process models embed blank texts; the service (and so its HTTP client) agrees.
    async with asgi_client(fake_app()) as client:
        reply = await client.post("/v1/embeddings", json={"input": ["ok", "  ", ""]})
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["data"]) == 3


async def test_limits_are_413_never_a_silent_cut() -> None:
    app = fake_app(max_items_per_request=3, max_chars_per_item=10, max_request_bytes=2000)
    async with asgi_client(app) as client:
        assert_error(
            await client.post("/v1/embeddings", json={"input": ["a"] * 4}),
            413,
            "payload_too_large",
            "input",
        )
        assert_error(
            await client.post("/v1/embeddings", json={"input": ["a", "x" * 11]}),
            413,
            "payload_too_large",
            "input[1]",
        )
        assert_error(
            await client.post("/v1/embeddings", json={"input": "y" * 5000}),
            413,
            "payload_too_large",
            "body",
        )

        async def chunks():  # no Content-Length: the streamed body is counted instead
            for _ in range(10):
                yield b" " * 500

        streamed = await client.post(
            "/v1/embeddings", content=chunks(), headers={"content-type": "application/json"}
        )
        assert_error(streamed, 413, "payload_too_large", "body")


async def test_wrong_model_name_is_refused() -> None:
    async with asgi_client(fake_app()) as client:
        reply = await client.post(
            "/v1/embeddings", json={"input": "x", "model": "text-embedding-3-small"}
        )
    assert_error(reply, 404, "model_not_found", "model")


async def test_malformed_json_unknown_route_and_method() -> None:
    async with asgi_client(fake_app()) as client:
        broken = await client.post(
            "/v1/embeddings", content=b'{"input": [', headers={"content-type": "application/json"}
        )
        assert_error(broken, 422, "invalid_json", "body")
        assert_error(await client.get("/nope"), 404, "not_found")
        assert_error(await client.get("/v1/embeddings"), 405, "method_not_allowed")


async def test_an_unexpected_error_is_a_500_carrying_the_request_id() -> None:
    app = fake_app()

    async def broken(*_args: object) -> None:
        raise RuntimeError("a bug")

    app.state.model.embed = broken
    async with asgi_client(app, raise_app_exceptions=False) as client:
        reply = await client.post(
            "/v1/embeddings", json={"input": "x"}, headers={"x-request-id": "req-500"}
        )
        assert_error(reply, 500, "internal_error")
        assert "request id" in reply.json()["error"]["message"]
        assert reply.headers["x-request-id"] == "req-500"
        text = (await client.get("/metrics")).text
    assert 'route="/v1/embeddings",service="embedder",status="500"' in text


async def test_ops_endpoints() -> None:
    async with asgi_client(fake_app()) as client:
        assert (await client.get("/health")).json() == {"status": "ok"}
        ready = (await client.get("/ready")).json()
        assert ready == {
            "status": "ready",
            "components": {"model": "fake:tiny", "backend": "fake", "status": "ready"},
        }
        info = (await client.get("/info")).json()
        assert info["model_id"] == "fake:tiny"
        assert info["dimension"] == 64
        assert info["max_items_per_request"] == 512
        models = (await client.get("/v1/models")).json()
        assert models["data"][0]["id"] == "fake:tiny"
        await client.post("/v1/embeddings", json={"input": "x"})
        text = (await client.get("/metrics")).text
        assert (
            'semsearch_http_requests_total{method="POST",route="/v1/embeddings",service="embedder",status="200"}'
            in text
        )
        assert "semsearch_http_request_duration_seconds_bucket" in text


async def test_request_id_is_echoed_or_created() -> None:
    async with asgi_client(fake_app()) as client:
        given = await client.get("/health", headers={"x-request-id": "abc-123"})
        assert given.headers["x-request-id"] == "abc-123"
        hostile = await client.get("/health", headers={"x-request-id": "bad id\twith spaces"})
        assert hostile.headers["x-request-id"] != "bad id\twith spaces"
        assert len(hostile.headers["x-request-id"]) == 32


@pytest.mark.slow
async def test_real_model_through_the_service() -> None:
    async with asgi_client(create_app(EmbedderSettings())) as client:
        reply = await client.post(
            "/v1/embeddings",
            json={
                "input": ["How many people live in Berlin?", "Berlin has 3.7 million people."],
                "input_type": "query",
            },
        )
        vectors = np.array([d["embedding"] for d in reply.json()["data"]])
        assert vectors.shape == (2, 384)
        assert float(vectors[0] @ vectors[1]) > 0.6
        assert (await client.get("/info")).json()["max_input_tokens"] == 256


async def test_not_ready_while_the_model_cannot_load() -> None:
    app = create_app(EmbedderSettings(model="/no/such/model"))
    async with asgi_client(app, wait_ready=False) as client:
        for _ in range(200):
            ready = await client.get("/ready")
            if "failed" in ready.json()["components"]["status"]:
                break
            import asyncio

            await asyncio.sleep(0.05)
        assert ready.status_code == 503
        assert (await client.get("/health")).status_code == 200
        assert_error(await client.post("/v1/embeddings", json={"input": "x"}), 503, "unavailable")
        assert_error(await client.get("/info"), 503, "unavailable")
