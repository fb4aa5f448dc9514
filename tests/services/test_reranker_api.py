"""The reranker service in-process: NVIDIA /v1/ranking, Cohere/TEI /rerank, limits, states."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from app.config import RerankerSettings
from services.reranker.main import create_app
from tests.services.conftest import asgi_client, assert_error

PASSAGES = ["cats purr", "Berlin is the capital of Germany", "Berlin Germany capital city"]


def fake_app(**overrides: object):  # type: ignore[no-untyped-def]
    return create_app(RerankerSettings(backend="fake", model="tiny", **overrides))


async def test_nvidia_ranking_sorted_by_logit() -> None:
    async with asgi_client(fake_app()) as client:
        reply = await client.post(
            "/v1/ranking",
            json={
                "query": {"text": "capital of Germany"},
                "passages": [{"text": p} for p in PASSAGES],
            },
        )
    assert reply.status_code == 200, reply.text
    rankings = reply.json()["rankings"]
    assert sorted(r["index"] for r in rankings) == [0, 1, 2]
    logits = [r["logit"] for r in rankings]
    assert logits == sorted(logits, reverse=True)
    assert rankings[-1]["index"] == 0


async def test_cohere_rerank_top_n_documents_and_scores() -> None:
    async with asgi_client(fake_app()) as client:
        reply = await client.post(
            "/rerank",
            json={
                "query": "capital of Germany",
                "documents": [PASSAGES[0], {"text": PASSAGES[1]}, PASSAGES[2]],
                "top_n": 2,
                "return_documents": True,
            },
        )
        body = reply.json()
        assert reply.status_code == 200, reply.text
        assert body["model"] == "fake:tiny"
        assert body["id"] == reply.headers["x-request-id"]
        assert len(body["results"]) == 2
        assert {r["index"] for r in body["results"]} == {1, 2}
        assert all(0.0 < r["relevance_score"] < 1.0 for r in body["results"])
        assert body["results"][0]["document"]["text"] in PASSAGES

        raw = (
            await client.post(
                "/rerank",
                json={"query": "capital of Germany", "documents": PASSAGES, "raw_scores": True},
            )
        ).json()
        bare = next(r for r in raw["results"] if r["index"] == 1)
        sig = next(r for r in body["results"] if r["index"] == 1)
        assert sig["relevance_score"] == pytest.approx(1 / (1 + math.exp(-bare["relevance_score"])))
        assert "document" not in raw["results"][0]


async def test_ties_keep_input_order() -> None:
    async with asgi_client(fake_app()) as client:
        reply = await client.post("/rerank", json={"query": "zzz", "documents": ["a", "b", "c"]})
    assert [r["index"] for r in reply.json()["results"]] == [0, 1, 2]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/ranking", {"query": {"text": "q"}, "passages": []}, "passages"),
        ("/v1/ranking", {"query": "q", "passages": [{"text": "p"}]}, "query"),
        (
            "/v1/ranking",
            {"query": {"text": "q"}, "passages": [{"text": "p"}], "truncate": "START"},
            "truncate",
        ),
        ("/rerank", {"query": "", "documents": ["d"]}, "query"),
        ("/rerank", {"query": "q", "documents": ["d"], "top_n": 0}, "top_n"),
        ("/rerank", {"query": "q", "documents": ["d"], "topn": 1}, "topn"),
    ],
)
async def test_invalid_bodies(path: str, body: dict[str, object], field: str) -> None:
    async with asgi_client(fake_app()) as client:
        reply = await client.post(path, json=body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["field"].startswith(field)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/v1/ranking",
            '{"query": {"text": "q\\ud800"}, "passages": [{"text": "p"}]}',
            "query.text",
        ),
        (
            "/v1/ranking",
            '{"query": {"text": "q"}, "passages": [{"text": "\\udc00"}]}',
            "passages[0].text",
        ),
        ("/rerank", '{"query": "q \\ud800", "documents": ["d"]}', "query"),
        ("/rerank", '{"query": "q", "documents": ["d", "\\udc00"]}', "documents[1]"),
        ("/rerank", '{"query": "q", "documents": [{"text": "\\udc00"}]}', "documents[0].text"),
    ],
)
async def test_a_lone_surrogate_is_422_naming_the_field(path: str, body: str, field: str) -> None:
    async with asgi_client(fake_app()) as client:
        reply = await client.post(path, content=body, headers={"content-type": "application/json"})
    assert_error(reply, 422, "invalid_request", field)


async def test_limits_and_overflow() -> None:
    async with asgi_client(fake_app(max_items_per_request=2, max_chars_per_item=50)) as client:
        assert_error(
            await client.post("/rerank", json={"query": "q", "documents": ["a", "b", "c"]}),
            413,
            "payload_too_large",
            "documents",
        )
        assert_error(
            await client.post("/rerank", json={"query": "q", "documents": ["x" * 51]}),
            413,
            "payload_too_large",
            "documents[0]",
        )
        assert_error(
            await client.post("/rerank", json={"query": "q" * 51, "documents": ["x"]}),
            413,
            "payload_too_large",
            "query",
        )
    async with asgi_client(fake_app()) as client:
        long = " ".join(["w"] * 600)
        assert_error(
            await client.post("/rerank", json={"query": "q", "documents": ["a", long]}),
            422,
            "input_too_long",
            "documents[1]",
        )
        assert_error(
            await client.post(
                "/v1/ranking",
                json={"query": {"text": "q"}, "passages": [{"text": "a"}, {"text": long}]},
            ),
            422,
            "input_too_long",
            "passages[1]",
        )
        ok = await client.post(
            "/rerank", json={"query": "q", "documents": [long], "truncate": True}
        )
        assert ok.status_code == 200


async def test_unloadable_model_starts_but_is_not_ready() -> None:
    app = create_app(RerankerSettings(model="cross-encoder/ms-marco-MiniLM-L-6-v2"))  # offline
    async with asgi_client(app, wait_ready=False) as client:
        assert (await client.get("/health")).status_code == 200
        for _ in range(400):
            ready = await client.get("/ready")
            if "failed" in ready.json()["components"]["status"]:
                break
            await asyncio.sleep(0.05)
        assert ready.status_code == 503
        reply = await client.post(
            "/v1/ranking", json={"query": {"text": "q"}, "passages": [{"text": "p"}]}
        )
        assert_error(reply, 503, "unavailable")
        assert reply.headers["retry-after"] == "1"


@pytest.mark.slow
async def test_tiny_cross_encoder_through_the_service(tiny_cross_encoder: Path) -> None:
    app = create_app(RerankerSettings(model=str(tiny_cross_encoder), max_length=64))
    async with asgi_client(app) as client:
        reply = await client.post(
            "/v1/ranking",
            json={"query": {"text": "q"}, "passages": [{"text": p} for p in PASSAGES]},
        )
        assert reply.status_code == 200
        assert sorted(r["index"] for r in reply.json()["rankings"]) == [0, 1, 2]
        info = (await client.get("/info")).json()
        assert info["kind"] == "reranker"
        assert info["max_input_tokens"] == 64
