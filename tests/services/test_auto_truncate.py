"""Auto-truncate (TEI's `--auto-truncate`): off, an over-long input is refused naming its field;
on, a request that does not say `truncate` has it cut, logged with the request id, counted,
and `usage` counts what was embedded. A request that says `truncate` keeps its choice."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from app import metrics
from app.config import EmbedderSettings, RerankerSettings
from app.models.fake import FAKE_MAX_TOKENS
from services.embedder.main import create_app as create_embedder
from services.reranker.main import create_app as create_reranker
from tests.services.conftest import asgi_client, assert_error

LONG = " ".join(["word"] * (FAKE_MAX_TOKENS + 44))  # 300 fake tokens (words)


def cuts(service: str) -> float:
    return metrics.AUTO_TRUNCATED.labels(service)._value.get()


def auto_logs(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [entry for entry in logs if entry.get("event") == "auto_truncated"]


async def test_embeddings_refuse_long_input_when_auto_truncate_is_off() -> None:
    app = create_embedder(EmbedderSettings(backend="fake", model="tiny"))
    async with asgi_client(app) as client:
        refused = await client.post("/v1/embeddings", json={"input": ["ok", LONG]})
        assert_error(refused, 422, "input_too_long", "input[1]")
        tei = await client.post("/embed", json={"inputs": [LONG]})
        assert_error(tei, 422, "input_too_long", "inputs[0]")
        too_many_chars = await client.post("/v1/embeddings", json={"input": "x" * 40_000})
        assert_error(too_many_chars, 413, "payload_too_large", "input[0]")


async def test_embeddings_cut_long_input_when_auto_truncate_is_on() -> None:
    app = create_embedder(EmbedderSettings(backend="fake", model="tiny", auto_truncate=True))
    before = cuts("embedder")
    async with asgi_client(app) as client:
        with capture_logs(processors=[merge_contextvars]) as logs:  # + the request id
            reply = await client.post(
                "/v1/embeddings", json={"input": ["ok", LONG]}, headers={"x-request-id": "r-cut"}
            )
        assert reply.status_code == 200, reply.text
        # what was embedded: 1 + the window, not the 301 words sent
        assert reply.json()["usage"]["prompt_tokens"] == 1 + FAKE_MAX_TOKENS
        [logged] = auto_logs(logs)
        assert logged["field"] == "input[1]" and logged["service"] == "embedder"
        assert logged["request_id"] == "r-cut"
        assert cuts("embedder") == before + 1

        fits = await client.post("/v1/embeddings", json={"input": ["short"]})
        assert fits.status_code == 200
        assert cuts("embedder") == before + 1  # nothing cut, nothing counted

        # the caller's explicit choice wins over the service's default
        asked = await client.post("/v1/embeddings", json={"input": [LONG], "truncate": "NONE"})
        assert_error(asked, 422, "input_too_long", "input[0]")
        tei = await client.post("/embed", json={"inputs": [LONG]})
        assert tei.status_code == 200
        tei_asked = await client.post("/embed", json={"inputs": [LONG], "truncate": False})
        assert_error(tei_asked, 422, "input_too_long", "inputs[0]")
        assert cuts("embedder") == before + 2
        # the character limit is a size guard, not the model window: still 413
        too_many_chars = await client.post("/v1/embeddings", json={"input": "x" * 40_000})
        assert_error(too_many_chars, 413, "payload_too_large", "input[0]")
        scraped = (await client.get("/metrics")).text
    assert 'semsearch_auto_truncated_requests_total{service="embedder"}' in scraped


@pytest.mark.parametrize("auto", [False, True])
async def test_rerank_routes_follow_auto_truncate(auto: bool) -> None:
    long_doc = " ".join(["word"] * 600)  # over the fake reranker's 512
    app = create_reranker(RerankerSettings(backend="fake", model="ce", auto_truncate=auto))
    before = cuts("reranker")
    async with asgi_client(app) as client:
        rerank = await client.post("/rerank", json={"query": "q", "documents": ["q", long_doc]})
        ranking = await client.post(
            "/v1/ranking", json={"query": {"text": "q"}, "passages": [{"text": long_doc}]}
        )
        explicit = await client.post(
            "/rerank", json={"query": "q", "documents": [long_doc], "truncate": False}
        )
    assert_error(explicit, 422, "input_too_long", "documents[0]")
    if auto:
        assert rerank.status_code == 200 and ranking.status_code == 200, rerank.text
        assert cuts("reranker") == before + 2
    else:
        assert_error(rerank, 422, "input_too_long", "documents[1]")
        assert_error(ranking, 422, "input_too_long", "passages[0]")
        assert cuts("reranker") == before


@pytest.mark.slow
async def test_usage_counts_the_tokens_a_real_tokenizer_embedded(tiny_bi_encoder: Path) -> None:
    settings = EmbedderSettings(model=str(tiny_bi_encoder), max_seq_length=32, auto_truncate=True)
    async with asgi_client(create_embedder(settings)) as client:
        reply = await client.post("/v1/embeddings", json={"input": ["hello " * 100]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["prompt_tokens"] == 32  # the window, special tokens included
