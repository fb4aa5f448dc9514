"""The closed-loop load generator's own HTTP/1.1 client, against a socket server whose answers
are written by hand: declared lengths on a kept connection, chunked answers, a server that
closes after each answer, one that breaks the connection, and headers sent along."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx

from harness.loadgen import LoadResult, run_load, run_open_loop

Answer = Callable[[int, dict[str, str], bytes], bytes]


@asynccontextmanager
async def server(answer: Answer) -> AsyncIterator[tuple[str, list[int], list[dict[str, str]]]]:
    """A server answering each request with `answer(n, headers, body)` (n counts requests);
    yields its URL, how many requests each connection carried, and the requests' headers."""
    per_connection: list[int] = []
    seen: list[dict[str, str]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        per_connection.append(0)
        mine = len(per_connection) - 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")[1:]
                headers = {
                    name.lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in lines if line)
                }
                body = await reader.readexactly(int(headers["content-length"]))
                per_connection[mine] += 1
                seen.append(headers)
                reply = answer(len(seen), headers, body)
                if not reply:  # break the connection instead of answering
                    break
                writer.write(reply)
                await writer.drain()
                if b"connection: close" in reply.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/search", per_connection, seen
    finally:
        listener.close()
        await listener.wait_closed()


def echo(status: int = 200, close: bool = False, chunked: bool = False) -> Answer:
    """Answers with the request's own JSON body."""

    def answer(_n: int, _headers: dict[str, str], body: bytes) -> bytes:
        head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
        if close:
            head += "connection: close\r\n"
        if chunked:
            half = len(body) // 2
            chunks = b"".join(
                f"{len(part):x}\r\n".encode() + part + b"\r\n"
                for part in (body[:half], body[half:])
                if part
            )
            return f"{head}transfer-encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n"
        return f"{head}content-length: {len(body)}\r\n\r\n".encode() + body

    return answer


def labels(reply: httpx.Response) -> list[str]:
    return [f"{reply.status_code}:{reply.json()['q']}"] if reply.status_code == 200 else []


BODIES = [{"q": "a"}, {"q": "b"}]


async def test_keeps_one_connection_per_worker_and_reads_every_answer() -> None:
    async with server(echo()) as (url, per_connection, _):
        result = await run_load(
            url, BODIES, concurrency=2, duration_s=0.0, min_requests=10, classify=labels
        )
    assert result.requests == 10 and result.errors == 0 and result.statuses == {200: 10}
    assert result.labels == {"200:a": 5, "200:b": 5}
    assert len(result.latencies_ms) == 10
    # two warm-up requests on the first worker's connection, then each worker on its own
    assert len(per_connection) == 2 and sum(per_connection) == 12


async def test_reads_chunked_answers() -> None:
    async with server(echo(chunked=True)) as (url, per_connection, _):
        result = await run_load(
            url, BODIES, concurrency=1, duration_s=0.0, min_requests=4, classify=labels
        )
    assert result.errors == 0 and result.labels == {"200:a": 2, "200:b": 2}
    assert per_connection == [6]


async def test_opens_a_new_connection_when_the_server_closes_one() -> None:
    async with server(echo(close=True)) as (url, per_connection, _):
        result = await run_load(url, BODIES, concurrency=1, duration_s=0.0, min_requests=3)
    assert result.errors == 0 and result.statuses == {200: 3}
    assert per_connection == [1] * 5  # two warm-up requests and three measured


async def test_a_broken_connection_counts_as_an_error_and_the_next_request_reconnects() -> None:
    good = echo()

    def flaky(n: int, headers: dict[str, str], body: bytes) -> bytes:
        return b"" if n == 4 else good(n, headers, body)

    async with server(flaky) as (url, per_connection, _):
        result = await run_load(
            url, BODIES, concurrency=1, duration_s=0.0, min_requests=4, warmup_requests=1
        )
    assert result.requests == 4 and result.errors == 1
    assert result.statuses == {200: 3, 0: 1}  # 0: no answer (a transport error)
    assert per_connection == [4, 1]


async def test_statuses_other_than_200_are_errors_and_headers_are_sent() -> None:
    async with server(echo(status=429)) as (url, _, seen):
        result = await run_load(
            url,
            BODIES,
            concurrency=1,
            duration_s=0.0,
            min_requests=2,
            warmup_requests=0,
            headers={"Authorization": "Bearer t"},
        )
    assert result.statuses == {429: 2} and result.errors == 2
    assert [h["authorization"] for h in seen] == ["Bearer t", "Bearer t"]
    assert all(h["content-type"] == "application/json" for h in seen)


def test_pooled_rounds_add_up_counts_and_time_and_keep_every_latency() -> None:
    first = LoadResult(2, 3, 1, 1.5, 1, [1.0, 2.0, 9.0], [1.0, 2.0], {200: [1.0, 2.0], 429: [9.0]})
    first.statuses, first.labels = {200: 2, 429: 1}, {"reranked": 2}
    second = LoadResult(2, 2, 0, 0.5, 1, [3.0, 4.0], [3.0, 4.0], {200: [3.0, 4.0]})
    second.statuses, second.labels = {200: 2}, {"reranked": 1, "not reranked": 1}
    pooled = LoadResult.pooled([first, second])
    assert (pooled.requests, pooled.errors, pooled.seconds) == (5, 1, 2.0)
    assert pooled.rps == 2.0  # four answered in two seconds
    assert sorted(pooled.latencies_ms) == [1.0, 2.0, 3.0, 4.0, 9.0]
    assert pooled.percentile(50, admitted_only=True) == 2.5
    assert pooled.status_latencies_ms == {200: [1.0, 2.0, 3.0, 4.0], 429: [9.0]}
    assert pooled.statuses == {200: 4, 429: 1}
    assert pooled.labels == {"reranked": 3, "not reranked": 1}
    assert first.requests == 3 and first.latencies_ms == [1.0, 2.0, 9.0]  # inputs untouched


async def test_the_open_loop_sends_each_request_on_a_connection_of_its_own() -> None:
    async with server(echo()) as (url, per_connection, seen):
        result = await run_open_loop(url, BODIES, rate_per_s=50, duration_s=0.1)
    assert result.requests == 5 and result.errors == 0 and result.statuses == {200: 5}
    assert per_connection == [1] * 5
    assert all(h["connection"] == "close" for h in seen)
