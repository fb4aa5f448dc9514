"""Spans in-process: the gateway's request span with one child per search stage, a caller's
`traceparent` continued by a model service, and the batch queue's time on its span."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import tracing
from app.config import EmbedderSettings, GatewaySettings
from services.embedder.main import create_app as create_embedder
from services.gateway.main import create_app as create_gateway
from tests.services.conftest import asgi_client
from tests.services.test_gateway_api import gateway_env, small_collection

__all__ = ["gateway_env", "small_collection"]  # fixtures shared with the gateway's tests
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.enable("test", SimpleSpanProcessor(exporter))
    yield exporter
    tracing.disable()


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in finished}


async def test_a_search_is_one_trace_with_a_span_per_stage(
    gateway_env: GatewaySettings, spans: InMemorySpanExporter
) -> None:
    async with asgi_client(create_gateway(gateway_env)) as client:
        reply = await client.post("/v1/search", json={"query": "capital of Germany"})
    assert reply.status_code == 200, reply.text
    found = by_name(spans.get_finished_spans())
    root = found["POST /v1/search"]
    assert root.attributes is not None and root.attributes["http.response.status_code"] == 200
    stages = {"search.cache", "search.embed", "search.ann", "search.lexical", "search.rerank"}
    assert stages <= set(found)
    assert root.context is not None
    for name in stages:
        span = found[name]
        assert span.context is not None and span.parent is not None
        assert span.context.trace_id == root.context.trace_id
        assert span.parent.span_id == root.context.span_id
    assert not any(name.endswith(("/ready", "/health")) for name in found)  # probes untraced


async def test_a_model_service_continues_the_callers_trace(spans: InMemorySpanExporter) -> None:
    app = create_embedder(EmbedderSettings(backend="fake", model="tiny"))
    async with asgi_client(app) as client:
        reply = await client.post(
            "/v1/embeddings",
            json={"input": "x"},
            headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
        )
    assert reply.status_code == 200
    [span] = [s for s in spans.get_finished_spans() if s.name == "POST /v1/embeddings"]
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == CALLER_TRACE
    assert f"{span.parent.span_id:016x}" == CALLER_SPAN


@pytest.mark.slow
async def test_the_batch_queue_time_is_on_the_span(
    tiny_bi_encoder: Path, spans: InMemorySpanExporter
) -> None:
    app = create_embedder(EmbedderSettings(model=str(tiny_bi_encoder)))
    async with asgi_client(app) as client:
        reply = await client.post("/v1/embeddings", json={"input": ["a", "b c"]})
    assert reply.status_code == 200
    [span] = [s for s in spans.get_finished_spans() if s.name == "POST /v1/embeddings"]
    assert span.attributes is not None
    assert span.attributes["semsearch.batch.compute_ms"] > 0
    assert span.attributes["semsearch.batch.queue_ms"] >= 0
