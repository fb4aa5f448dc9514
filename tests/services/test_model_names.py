"""Model names clients send: aliases are served and listed, any other name is a 404 naming the
served names. The real `openai` SDK talks to the embedder app in-process (ASGI transport)."""

from __future__ import annotations

import httpx
import openai
import pytest
from asgi_lifespan import LifespanManager

from app.config import EmbedderSettings, RerankerSettings
from services.embedder.main import create_app as create_embedder
from services.reranker.main import create_app as create_reranker
from tests.services.conftest import asgi_client, assert_error

ALIAS = "text-embedding-3-small"


def embedder_app(**overrides: object):  # type: ignore[no-untyped-def]
    return create_embedder(EmbedderSettings(**{"backend": "fake", "model": "tiny", **overrides}))


def reranker_app(**overrides: object):  # type: ignore[no-untyped-def]
    return create_reranker(RerankerSettings(backend="fake", model="ce", **overrides))


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("text-embedding-3-small", [ALIAS]),
        (" a , b,, ", ["a", "b"]),
        ('["text-embedding-3-small", "ada,002"]', [ALIAS, "ada,002"]),
        ("", []),
    ],
)
def test_served_model_names_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, names: list[str]
) -> None:
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_SERVED_MODEL_NAMES", value)
    assert EmbedderSettings().served_model_names == names


async def test_the_openai_sdk_uses_an_alias_and_gets_a_404_for_another_name() -> None:
    async with LifespanManager(embedder_app(served_model_names=[ALIAS])) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            client = openai.AsyncOpenAI(
                base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0
            )
            listed = await client.models.list()
            assert [m.id for m in listed.data] == ["fake:tiny", ALIAS]

            reply = await client.embeddings.create(model=ALIAS, input=["hello world", "cats"])
            assert len(reply.data) == 2 and len(reply.data[0].embedding) == 64
            assert reply.model == "fake:tiny"  # the model that made them, not the alias
            assert reply.usage.prompt_tokens == 3

            with pytest.raises(openai.NotFoundError) as raised:
                await client.embeddings.create(model="text-embedding-ada-002", input="x")
    error = raised.value.body
    assert isinstance(error, dict)
    assert error["type"] == "model_not_found" and error["field"] == "model"
    assert "text-embedding-ada-002" in error["message"]
    assert "'fake:tiny', 'text-embedding-3-small'" in error["message"]


async def test_the_model_id_and_its_last_segment_stay_accepted() -> None:
    async with asgi_client(embedder_app(model="org/tiny")) as client:
        for name in ("fake:org/tiny", "tiny"):
            reply = await client.post("/v1/embeddings", json={"input": "x", "model": name})
            assert reply.status_code == 200, reply.text
        refused = await client.post("/v1/embeddings", json={"input": "x", "model": ALIAS})
        assert_error(refused, 404, "model_not_found", "model")
        assert refused.json()["error"]["message"].endswith("served names: 'fake:org/tiny'")


async def test_reranker_routes_accept_aliases_and_refuse_other_names() -> None:
    async with asgi_client(reranker_app(served_model_names=["rerank-v3", "bge"])) as client:
        listed = (await client.get("/v1/models")).json()
        assert [m["id"] for m in listed["data"]] == ["fake:ce", "rerank-v3", "bge"]
        assert (await client.get("/info")).json()["served_model_names"] == ["rerank-v3", "bge"]
        rerank = {"query": "q", "documents": ["q a", "b"]}
        ranking = {"query": {"text": "q"}, "passages": [{"text": "q a"}]}
        ok = await client.post("/rerank", json={**rerank, "model": "rerank-v3"})
        assert ok.status_code == 200, ok.text
        ok = await client.post("/v1/ranking", json={**ranking, "model": "bge"})
        assert ok.status_code == 200, ok.text
        for path, body in (("/rerank", rerank), ("/v1/ranking", ranking)):
            refused = await client.post(path, json={**body, "model": "gpt-4"})
            assert_error(refused, 404, "model_not_found", "model")
            assert "'rerank-v3', 'bge'" in refused.json()["error"]["message"]


async def test_openapi_documents_the_404_of_an_unknown_model() -> None:
    async with asgi_client(embedder_app()) as client:
        schema = (await client.get("/openapi.json")).json()
    for path in ("/v1/embeddings", "/v1/models"):
        method = "post" if path == "/v1/embeddings" else "get"
        assert "404" in schema["paths"][path][method]["responses"]
    not_found = schema["paths"]["/v1/embeddings"]["post"]["responses"]["404"]
    assert "served names" in not_found["description"]
    model_field = schema["components"]["schemas"]["EmbeddingsRequest"]["properties"]["model"]
    assert "alias" in model_field["description"]
