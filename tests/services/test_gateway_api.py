"""The gateway in-process: /v1/search over fakes, every bad input, degradation, ops endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import GatewaySettings
from app.models.fake import FakeEmbedder, FakeReranker
from services.gateway.main import create_app
from tests.conftest import drop_lexical
from tests.services.conftest import asgi_client, assert_error


@pytest.fixture
def gateway_env(monkeypatch: pytest.MonkeyPatch, small_collection: Path) -> GatewaySettings:
    """The embedded default, wired from settings, with fake models and a small collection."""
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_BACKEND", "fake")
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_MODEL", "embedder")  # -> model id "fake:embedder"
    monkeypatch.setenv("SEMSEARCH_RERANKER_BACKEND", "fake")
    return GatewaySettings(index_dir=small_collection)


@pytest.fixture
def small_collection(tmp_path: Path) -> Path:  # overrides the shared one: model id must match
    import asyncio

    from tests.conftest import SMALL_DOCS, build_collection

    async def build() -> None:
        index = await build_collection(
            tmp_path / "index", "default", SMALL_DOCS, FakeEmbedder(model_id="fake:embedder")
        )
        await index.close()

    asyncio.run(build())
    return tmp_path / "index"


async def test_search_happy_path(gateway_env: GatewaySettings) -> None:
    async with asgi_client(create_app(gateway_env)) as client:
        reply = await client.post(
            "/v1/search", json={"query": "capital of Germany Berlin", "top_k": 2}
        )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert next(r["id"] for r in body["results"]) == "berlin"
    assert [r["rank"] for r in body["results"]] == [1, 2]
    top = body["results"][0]
    assert top["document_id"] == top["id"] == "berlin"  # not chunked: its own document
    assert set(top) == {
        "id",
        "document_id",
        "rank",
        "score",
        "ann_score",
        "lexical_score",
        "found_by",
        "rerank_score",
        "title",
        "text",
        "metadata",
        "chunks",
        "snippet",
        "title_highlights",
    }
    assert top["rerank_score"] is not None
    assert [r["score"] for r in body["results"]] == sorted(
        (r["score"] for r in body["results"]), reverse=True
    )
    assert body["reranked"] is True
    assert body["degraded"] == []
    assert body["cached"] is False
    assert body["index"] == {"backend": "faiss", "collection": "default", "generation": 1}
    assert body["models"] == {
        "embedder": "fake:embedder",
        "reranker": "fake:cross-encoder/ms-marco-MiniLM-L-6-v2",
    }
    assert set(body["timings_ms"]) >= {"cache", "embed", "ann", "lexical", "rerank", "total"}
    assert body["mode"] == "hybrid"
    assert body["fusion"] == {"method": "blend", "weight": 0.3, "rrf_k": 60}  # uncalibrated
    assert set(top["found_by"]) <= {"dense", "lexical"} and top["found_by"]
    assert body["request_id"] == reply.headers["x-request-id"]


async def test_second_query_is_cached_and_request_ids_differ(gateway_env: GatewaySettings) -> None:
    async with asgi_client(create_app(gateway_env)) as client:
        first = (await client.post("/v1/search", json={"query": "Python readability"})).json()
        second = (await client.post("/v1/search", json={"query": "Python readability"})).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["results"] == second["results"]
    assert first["request_id"] != second["request_id"]


@pytest.mark.parametrize(
    ("body", "status", "error_type", "field"),
    [
        ({"query": ""}, 422, "invalid_request", "query"),
        ({"query": "   "}, 422, "invalid_request", "query"),
        ({"query": "x" * 2049}, 422, "invalid_request", "query"),
        ({"query": "\ufdfa" * 2000}, 422, "invalid_request", "query"),  # 36,000 after NFKC
        ({"query": 5}, 422, "invalid_request", "query"),
        ({}, 422, "invalid_request", "query"),
        ({"query": "q", "top_k": 0}, 422, "invalid_request", "top_k"),
        ({"query": "q", "top_k": 101}, 422, "invalid_request", "top_k"),
        ({"query": "q", "top_k": "ten"}, 422, "invalid_request", "top_k"),
        ({"query": "q", "candidates": 0}, 422, "invalid_request", "candidates"),
        ({"query": "q", "candidates": 5000}, 422, "invalid_request", "candidates"),
        ({"query": "q", "top_k": 20, "candidates": 10}, 422, "invalid_request", "candidates"),
        ({"query": "q", "rerank": "maybe"}, 422, "invalid_request", "rerank"),
        ({"query": "q", "topk": 3}, 422, "invalid_request", "topk"),
        ({"query": "q", "collection": "missing"}, 404, "not_found", "collection"),
        ({"query": "q", "collection": "../../etc"}, 422, "invalid_request", "collection"),
        ({"query": "q", "collection": ""}, 422, "invalid_request", "collection"),
        ({"query": "q", "mode": "semantic"}, 422, "invalid_request", "mode"),
        ({"query": "q", "fusion": "sum"}, 422, "invalid_request", "fusion"),
        ({"query": "q", "fusion_weight": 1.5}, 422, "invalid_request", "fusion_weight"),
        ({"query": "q", "fusion_weight": "high"}, 422, "invalid_request", "fusion_weight"),
    ],
)
async def test_bad_input_is_a_clear_4xx(
    gateway_env: GatewaySettings, body: dict[str, object], status: int, error_type: str, field: str
) -> None:
    async with asgi_client(create_app(gateway_env)) as client:
        reply = await client.post("/v1/search", json=body)
    assert_error(reply, status, error_type, field)


async def test_a_blank_text_is_refused_in_words_not_as_a_regex(
    gateway_env: GatewaySettings,
) -> None:
    async with asgi_client(create_app(gateway_env)) as client:
        search = await client.post("/v1/search", json={"query": " \x1e "})
        write = await client.post(
            "/v1/collections/default/documents", json={"documents": [{"id": "d", "text": "\t"}]}
        )
    assert search.json()["error"]["message"] == "query: must not be blank"
    assert write.status_code == 422, write.text
    assert write.json()["error"]["message"] == "documents[0].text: must not be blank"


async def test_malformed_json_and_oversized_body(gateway_env: GatewaySettings) -> None:
    async with asgi_client(create_app(gateway_env)) as client:
        assert_error(
            await client.post(
                "/v1/search", content=b"{not json", headers={"content-type": "application/json"}
            ),
            422,
            "invalid_json",
            "body",
        )
        assert_error(
            await client.post("/v1/search", content=b"x" * (9 * 1024 * 1024)),
            413,
            "payload_too_large",
            "body",
        )


async def test_reranker_that_cannot_load_degrades_every_answer(
    gateway_env: GatewaySettings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # offline, a hub id cannot load: the gateway must still serve, in ANN order
    monkeypatch.setenv("SEMSEARCH_RERANKER_BACKEND", "sentence-transformers")
    async with asgi_client(create_app(gateway_env)) as client:
        for _ in range(400):
            status = (await client.get("/ready")).json()["components"]["reranker"]["status"]
            if status != "loading":
                break
            import asyncio

            await asyncio.sleep(0.05)
        assert status.startswith("failed")
        reply = await client.post("/v1/search", json={"query": "capital of Germany Berlin"})
    body = reply.json()
    assert reply.status_code == 200
    assert body["reranked"] is False
    assert body["degraded"] == ["reranker"]
    assert body["results"][0]["id"] == "berlin"
    assert body["results"][0]["rerank_score"] is None


class Down(FakeEmbedder):
    async def embed(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        from app.errors import Unavailable

        raise Unavailable("connection refused")


async def test_embedder_down_answers_from_the_lexical_index(gateway_env: GatewaySettings) -> None:
    from app.assembly import build_pipeline
    from app.config import EmbedderSettings, RerankerSettings

    pipeline = build_pipeline(gateway_env, EmbedderSettings(), RerankerSettings())
    pipeline.embedder = Down(model_id="fake:embedder")
    async with asgi_client(create_app(gateway_env, pipeline)) as client:
        reply = await client.post("/v1/search", json={"query": "capital of France"})
    body = reply.json()
    assert reply.status_code == 200
    assert body["degraded"] == ["embedder"] and body["mode"] == "lexical"
    assert body["results"][0]["id"] == "paris" and body["results"][0]["found_by"] == ["lexical"]
    assert body["results"][0]["ann_score"] is None and body["results"][0]["lexical_score"] > 0


async def test_embedder_down_is_503_with_retry_after(gateway_env: GatewaySettings) -> None:
    """...when the collection has no lexical index to answer from."""
    drop_lexical(gateway_env.index_dir, "default")

    class Down(FakeEmbedder):
        async def embed(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            from app.errors import Unavailable

            raise Unavailable("connection refused")

    from app.assembly import build_pipeline
    from app.config import EmbedderSettings, RerankerSettings

    pipeline = build_pipeline(gateway_env, EmbedderSettings(), RerankerSettings())
    pipeline.embedder = Down(model_id="fake:embedder")
    async with asgi_client(create_app(gateway_env, pipeline)) as client:
        reply = await client.post("/v1/search", json={"query": "anything"})
    assert_error(reply, 503, "embedder_unavailable")
    assert reply.headers["retry-after"] == "1"
    assert "no search is possible" in reply.json()["error"]["message"]


async def test_ready_collections_metrics_and_playground(gateway_env: GatewaySettings) -> None:
    async with asgi_client(create_app(gateway_env)) as client:
        ready = (await client.get("/ready")).json()
        assert ready["status"] == "ready"
        assert ready["components"]["collections"]["default"]["generation"] == 1
        assert ready["components"]["cache"] == "memory"
        listed = (await client.get("/v1/collections")).json()
        assert listed["collections"]["default"]["backend"] == "faiss"
        await client.post("/v1/search", json={"query": "cats"})
        metrics = (await client.get("/metrics")).text
        for name in (
            "semsearch_search_stage_duration_seconds_bucket",
            "semsearch_searches_total",
            "semsearch_cache_requests_total",
            "semsearch_index_generation",
            "semsearch_http_requests_total",
        ):
            assert name in metrics, name
        page = await client.get("/")
        assert page.status_code == 200
        assert "/v1/search" in page.text
        openapi = (await client.get("/openapi.json")).json()
        assert "/v1/search" in openapi["paths"]


async def test_not_ready_without_an_index(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_BACKEND", "fake")
    monkeypatch.setenv("SEMSEARCH_RERANKER_BACKEND", "fake")
    app = create_app(GatewaySettings(index_dir=tmp_path / "empty"))
    async with asgi_client(app, wait_ready=False) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["components"]["collections"] == {}
        assert_error(
            await client.post("/v1/search", json={"query": "q"}), 404, "not_found", "collection"
        )


async def test_new_generation_is_served_without_a_restart(gateway_env: GatewaySettings) -> None:
    from tests.conftest import SMALL_DOCS, build_collection

    settings = gateway_env.model_copy(update={"index_reload_interval_s": 0.05})
    async with asgi_client(create_app(settings)) as client:
        assert (await client.post("/v1/search", json={"query": "Madrid Spain"})).json()["index"][
            "generation"
        ] == 1
        from app.types import Document

        index = await build_collection(
            settings.index_dir,
            "default",
            [*SMALL_DOCS, Document("madrid", "Madrid is the capital of Spain.", "Madrid")],
            FakeEmbedder(model_id="fake:embedder"),
        )
        await index.close()
        import asyncio

        for _ in range(100):
            body = (await client.post("/v1/search", json={"query": "Madrid Spain"})).json()
            if body["index"]["generation"] == 2:
                break
            await asyncio.sleep(0.05)
        assert body["index"]["generation"] == 2
        assert body["results"][0]["id"] == "madrid"


def test_import_has_no_side_effects() -> None:
    import services.gateway.main as module

    assert "app" not in vars(module)  # built lazily for `uvicorn services.gateway.main:app`
    assert FakeReranker  # keep the import used by the fixtures' docs


async def test_api_keys_guard_search_but_not_ops_endpoints(
    gateway_env: GatewaySettings,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = gateway_env.model_copy(
        update={"api_keys": ["s3cret-key"], "rate_limit_burst": 2, "rate_limit_per_s": 0.01}
    )
    async with asgi_client(create_app(settings)) as client:
        missing = await client.post("/v1/search", json={"query": "cats"})
        assert_error(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"] == "Bearer"
        assert_error(
            await client.post(
                "/v1/search", json={"query": "cats"}, headers={"Authorization": "Bearer wrong"}
            ),
            401,
            "unauthorized",
        )
        # an unauthenticated request learns nothing about its body
        assert_error(await client.post("/v1/search", json={"nonsense": 1}), 401, "unauthorized")
        ok = await client.post(
            "/v1/search", json={"query": "cats"}, headers={"Authorization": "Bearer s3cret-key"}
        )
        assert ok.status_code == 200
        ok2 = await client.post(
            "/v1/search", json={"query": "cats"}, headers={"X-API-Key": "s3cret-key"}
        )
        assert ok2.status_code == 200
        limited = await client.post(
            "/v1/search", json={"query": "cats"}, headers={"X-API-Key": "s3cret-key"}
        )
        assert_error(limited, 429, "overloaded")
        assert int(limited.headers["retry-after"]) >= 1
        assert_error(await client.get("/v1/collections"), 401, "unauthorized")
        for open_path in ("/health", "/ready", "/metrics"):
            assert (await client.get(open_path)).status_code == 200, open_path
        openapi = (await client.get("/openapi.json")).json()
        assert openapi["paths"]["/v1/search"]["post"]["security"]
    captured = capsys.readouterr()
    logged = caplog.text + captured.out + captured.err
    assert "api_key_id" in logged  # requests are attributed to a key...
    assert "s3cret-key" not in logged  # ...but never by the key itself


async def test_timeout_ms_is_validated(gateway_env: GatewaySettings) -> None:
    async with asgi_client(create_app(gateway_env)) as client:
        assert_error(
            await client.post("/v1/search", json={"query": "q", "timeout_ms": 0}),
            422,
            "invalid_request",
            "timeout_ms",
        )
        assert_error(
            await client.post("/v1/search", json={"query": "q", "timeout_ms": 10**6}),
            422,
            "invalid_request",
            "timeout_ms",
        )
        ok = await client.post("/v1/search", json={"query": "q", "timeout_ms": 2000})
        assert ok.status_code == 200


async def test_ready_lists_the_circuits(gateway_env: GatewaySettings) -> None:
    async with asgi_client(create_app(gateway_env)) as client:
        ready = (await client.get("/ready")).json()["components"]
    assert ready["circuits"] == {
        "embedder": "closed",
        "index": "closed",
        "lexical": "closed",
        "reranker": "closed",
    }
    assert ready["inflight"] == 0


async def test_filter_over_http(gateway_env: GatewaySettings) -> None:
    async with asgi_client(create_app(gateway_env)) as client:
        reply = await client.post(
            "/v1/search", json={"query": "language", "filter": {"topic": "software"}}
        )
        assert reply.status_code == 200
        assert {r["id"] for r in reply.json()["results"]} == {"rust", "python"}
        for bad in ({"topic": {"$gt": 1}}, {"": "x"}, [1], {"topic": []}, {"a.b": "x"}):
            assert_error(
                await client.post("/v1/search", json={"query": "q", "filter": bad}),
                422,
                "invalid_request",
            )
        # values JSON parsers let through but no index can hold: a client error every time,
        # never a 5xx, and never counted against the index (its breaker stays closed)
        for raw in ("100000000000000000000000", "NaN", '"\\udc80"', '["x", 1e999]'):
            body = '{"query": "q", "filter": {"topic": ' + raw + "}}"
            reply = await client.post(
                "/v1/search", content=body, headers={"content-type": "application/json"}
            )
            assert_error(reply, 422, "invalid_request", "filter.topic")
        ready = (await client.get("/ready")).json()["components"]
        assert ready["circuits"]["index"] == "closed"


async def test_admin_reload_picks_up_a_new_generation_at_once(gateway_env: GatewaySettings) -> None:
    from app.types import Document
    from tests.conftest import SMALL_DOCS, build_collection

    settings = gateway_env.model_copy(update={"index_reload_interval_s": 3600})
    async with asgi_client(create_app(settings)) as client:
        index = await build_collection(
            settings.index_dir,
            "default",
            [*SMALL_DOCS, Document("oslo", "Oslo is the capital of Norway.", "Oslo")],
            FakeEmbedder(model_id="fake:embedder"),
        )
        await index.close()
        reply = await client.post("/admin/reload")
        assert reply.status_code == 200
        assert reply.json() == {"reloaded": ["default"]}
        body = (await client.post("/v1/search", json={"query": "Oslo Norway"})).json()
        assert body["index"]["generation"] == 2 and body["results"][0]["id"] == "oslo"
