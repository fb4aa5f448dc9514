"""The HTTP clients against the model services, in-process (httpx's ASGI transport) and over a
real socket (aiohttp, what the gateway uses): they behave as the local models do."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from asgi_lifespan import LifespanManager

from app.config import EmbedderSettings, RerankerSettings
from app.errors import (
    EmbedderUnavailable,
    InputTooLong,
    InvalidInput,
    Overloaded,
    RerankerUnavailable,
)
from app.models.fake import FakeEmbedder, FakeReranker
from app.models.http import HttpEmbedder, HttpReranker
from app.resilience import call_deadline
from app.types import InputType, Truncate
from harness.processes import free_port
from services.embedder.main import create_app as embedder_app
from services.reranker.main import create_app as reranker_app


@asynccontextmanager
async def serving(app: Any, way: str) -> AsyncIterator[tuple[str, httpx.AsyncBaseTransport | None]]:
    """The app in-process (`way` "asgi") or on a real socket ("network"): (base URL, transport)."""
    if way == "asgi":
        async with LifespanManager(app) as manager:
            yield "http://service", httpx.ASGITransport(app=manager.app)
        return
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    for _ in range(1000):  # uvicorn sets a flag, no event
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}", None
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def embedder_client(way: str = "asgi", **settings: object) -> AsyncIterator[HttpEmbedder]:
    app = embedder_app(EmbedderSettings(backend="fake", model="tiny", **settings))  # type: ignore[arg-type]
    async with serving(app, way) as (url, transport):
        client = HttpEmbedder(url, 5, transport)
        await client.start()
        yield client
        await client.stop()


@asynccontextmanager
async def reranker_client(way: str = "asgi", **settings: object) -> AsyncIterator[HttpReranker]:
    app = reranker_app(RerankerSettings(backend="fake", model="tiny", **settings))  # type: ignore[arg-type]
    async with serving(app, way) as (url, transport):
        client = HttpReranker(url, 5, transport)
        await client.start()
        yield client
        await client.stop()


WAYS = pytest.mark.parametrize("way", ["asgi", "network"])


@WAYS
async def test_more_texts_than_a_request_takes_are_sent_in_pieces(way: str) -> None:
    texts = [f"text {i} " + "word " * i for i in range(11)]
    async with embedder_client(way, max_items_per_request=4) as client:
        result = await client.embed(texts, InputType.PASSAGE)
        with pytest.raises(InputTooLong) as raised:
            await client.embed([*texts, "w " * 300], InputType.PASSAGE)
    expected = await FakeEmbedder().embed(texts, InputType.PASSAGE)
    np.testing.assert_allclose(result.vectors, expected.vectors, atol=1e-6)
    assert result.prompt_tokens == expected.prompt_tokens
    assert raised.value.field == "input[11]"  # its index in the whole call, not in its piece

    passages = [f"passage {i} about cats" if i % 3 else f"passage {i}" for i in range(11)]
    async with reranker_client(way, max_items_per_request=4) as client:
        scores = await client.score("cats", passages)
    assert scores == await FakeReranker().score("cats", passages)


@WAYS
async def test_clients_take_what_the_local_models_take(way: str) -> None:
    async with embedder_client(way) as client:
        empty = await client.embed([], InputType.QUERY)
        blank = await client.embed(["ok", "  ", ""], InputType.PASSAGE)
        with pytest.raises(InvalidInput) as raised:
            await client.embed(["ok", "bad \ud800"], InputType.PASSAGE)
    assert empty.vectors.shape == (0, 64)
    assert blank.vectors.shape == (3, 64)
    assert raised.value.field == "input[1]"
    async with reranker_client(way) as client:
        assert await client.score("q", []) == []


async def test_a_service_that_is_not_there_is_unavailable_not_an_error_of_ours() -> None:
    client = HttpEmbedder(f"http://127.0.0.1:{free_port()}", 5)  # nothing listens
    await client.start()
    try:
        assert client.status.startswith("not ready: embedder service at http://127.0.0.1:")
        assert "unreachable" in client.status
        with pytest.raises(EmbedderUnavailable, match="unreachable"):
            await client.embed(["x"], InputType.QUERY)
    finally:
        await client.stop()


async def test_a_service_that_does_not_answer_in_time_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exchange's own timeout is mapped (a bare TimeoutError would look like the
    caller's deadline to StageGuard)."""
    from app.models import http as clients

    monkeypatch.setattr(clients, "PROBE_TIMEOUT_S", 0.2)
    accepted: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = HttpReranker(f"http://127.0.0.1:{port}", 0.2)
    await client.start()  # its /info times out too
    try:
        assert "timed out" in client.status
        with pytest.raises(RerankerUnavailable, match=r"timed out \(0.2s\)"):
            await client.score("q", ["p"])
    finally:
        await client.stop()
        server.close()


def answering(status: int, body: dict[str, object], headers: dict[str, str]) -> Any:
    """An ASGI app answering every call with `status`, `body`, `headers` (/info with 503)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        info = scope["path"] == "/info"
        content = json.dumps(
            {"error": {"type": "unavailable", "message": "x"}} if info else body
        ).encode()
        names = {} if info else headers
        await send(
            {
                "type": "http.response.start",
                "status": 503 if info else status,
                "headers": [(b"content-type", b"application/json")]
                + [(k.encode(), v.encode()) for k, v in names.items()],
            }
        )
        await send({"type": "http.response.body", "body": content})

    return app


@WAYS
@pytest.mark.parametrize(
    ("status", "error_type", "expected"),
    [(429, "overloaded", Overloaded), (503, "unavailable", EmbedderUnavailable)],
)
async def test_service_errors_keep_their_retry_after_and_field(
    way: str, status: int, error_type: str, expected: type[Exception]
) -> None:
    body = {"error": {"type": error_type, "message": "busy", "field": "input"}}
    async with serving(answering(status, body, {"Retry-After": "7"}), way) as (url, transport):
        client = HttpEmbedder(url, 5, transport)
        await client.start()
        with pytest.raises(expected) as raised:
            await client.embed(["x"], InputType.QUERY, Truncate.END)
        await client.stop()
    assert raised.value.retry_after_s == 7  # type: ignore[attr-defined]
    assert raised.value.field == "input"  # type: ignore[attr-defined]


class LateService(httpx.AsyncBaseTransport):
    """A service that refuses connections until `up` is set, then is `app`; counts requests."""

    def __init__(self, app: httpx.AsyncBaseTransport) -> None:
        self.app = app
        self.up = False
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        return await self.app.handle_async_request(request)


async def test_a_client_started_before_its_service_becomes_ready_by_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No embed call is needed: the client keeps asking /info in the background."""
    from app.models import http as clients

    monkeypatch.setattr(clients, "PROBE_FIRST_S", 0.01)
    monkeypatch.setattr(clients, "PROBE_MAX_S", 0.05)
    monkeypatch.setattr(clients, "PROBE_EVERY_S", 0.05)
    app = embedder_app(EmbedderSettings(backend="fake", model="tiny"))
    async with LifespanManager(app) as manager:
        service = LateService(httpx.ASGITransport(app=manager.app))
        client = HttpEmbedder("http://embedder", 5, service)
        await client.start()
        try:
            assert not client.ready and client.status.startswith("not ready")
            await asyncio.sleep(0.1)
            assert not client.ready  # still refused, still probing
            service.up = True
            for _ in range(100):
                if client.ready:
                    break
                await asyncio.sleep(0.01)
            assert client.ready and client.info.model_id == "fake:tiny"
            service.up = False  # gone again: /ready says so without a search
            for _ in range(100):
                if not client.ready:
                    break
                await asyncio.sleep(0.01)
            assert not client.ready
            assert set(service.paths) == {"/info"}  # nothing but probes was sent
        finally:
            await client.stop()


async def test_the_clients_tell_the_service_how_long_the_caller_waits() -> None:
    sent: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("x-request-timeout-ms"))
        return httpx.Response(503, json={"error": {"type": "unavailable", "message": "x"}})

    client = HttpReranker("http://reranker", 5, httpx.MockTransport(handle))
    await client.start()  # /info, with no caller deadline: no header
    token = call_deadline.set(time.monotonic() + 1.5)
    try:
        with pytest.raises(RerankerUnavailable):
            await client.score("q", ["p"])
    finally:
        call_deadline.reset(token)
        await client.stop()
    assert sent[0] is None
    assert sent[-1] is not None and 1400 <= int(sent[-1]) <= 1500


def test_the_environment_names_the_proxy_as_it_did_for_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.models.http import _env_proxy

    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    monkeypatch.setenv("NO_PROXY", "embedder.internal")
    assert _env_proxy("http://reranker:8002") == "http://proxy:3128"
    assert _env_proxy("http://embedder.internal:8001") is None
    monkeypatch.delenv("HTTP_PROXY")
    assert _env_proxy("http://reranker:8002") is None
