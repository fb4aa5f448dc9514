"""One search, one trace, three processes' worth of spans: the gateway in-process (spans in
memory) calls the embedder and the reranker running as real processes, which export their
spans over OTLP/HTTP (`OTEL_EXPORTER_OTLP_ENDPOINT`) to a receiver served by this test."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import tracing
from app.config import GatewaySettings
from app.models.fake import FakeEmbedder
from services.gateway.main import create_app
from tests.conftest import SMALL_DOCS, build_collection
from tests.integration.conftest import Service, child_env, free_port, start_service
from tests.services.conftest import asgi_client

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@dataclass(frozen=True)
class Received:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


class Collector:
    """An OTLP/HTTP trace receiver (protobuf, POST /v1/traces), just enough for a test."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    service = next(
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    )
                    for scope in resource_spans.scope_spans:
                        collector.spans.extend(
                            Received(
                                service,
                                s.name,
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                            )
                            for s in scope.spans
                        )
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, names: set[str], timeout_s: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while not names <= {s.name for s in self.spans}:
            if time.monotonic() > deadline:
                raise TimeoutError(f"received only {self.spans}")
            time.sleep(0.05)
        return list(self.spans)


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture
def gateway_spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.enable("gateway", SimpleSpanProcessor(exporter))
    yield exporter
    tracing.disable()


def test_one_search_is_one_trace_across_processes(
    tmp_path: Path,
    services: list[Service],
    collector: Collector,
    gateway_spans: InMemorySpanExporter,
) -> None:
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s, not 5 s
    }
    ports = {"embedder": free_port(), "reranker": free_port()}
    for kind, port in ports.items():
        settings = {f"SEMSEARCH_{kind.upper()}_BACKEND": "fake"}
        if kind == "embedder":
            settings["SEMSEARCH_EMBEDDER_MODEL"] = "embedder"  # model id "fake:embedder"
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            f"services.{kind}.main:app",
            "--port",
            str(port),
        ]
        services.append(start_service(kind, command, port, child_env(**otel, **settings), tmp_path))

    async def build() -> None:
        index = await build_collection(
            tmp_path / "index", "default", SMALL_DOCS, FakeEmbedder(model_id="fake:embedder")
        )
        await index.close()

    asyncio.run(build())
    settings = GatewaySettings(
        index_dir=tmp_path / "index",
        embedder_url=services[0].url,
        reranker_url=services[1].url,
    )

    async def search() -> None:
        async with asgi_client(create_app(settings)) as client:
            reply = await client.post("/v1/search", json={"query": "capital of Germany"})
            assert reply.status_code == 200, reply.text
            assert reply.json()["reranked"] is True

    asyncio.run(search())

    local = {span.name: span for span in gateway_spans.get_finished_spans()}
    remote = {s.name: s for s in collector.wait_for({"POST /v1/embeddings", "POST /v1/ranking"})}
    root = local["POST /v1/search"]
    assert root.context is not None
    trace_id = f"{root.context.trace_id:032x}"
    embedded, ranked = remote["POST /v1/embeddings"], remote["POST /v1/ranking"]
    assert (embedded.service, ranked.service) == ("semsearch-embedder", "semsearch-reranker")
    assert {s.trace_id for s in collector.spans} == {trace_id}  # one trace, no stray roots
    for received, stage in ((embedded, "search.embed"), (ranked, "search.rerank")):
        parent = local[stage].context
        assert parent is not None and parent.trace_id == root.context.trace_id
        assert received.parent_id == f"{parent.span_id:016x}"
    assert {"search.ann", "search.lexical"} <= set(local)
