"""HTTP load generators. Closed loop (genai-perf style): C workers, each sends a request, waits
for the answer, sends the next. Open loop: requests at a fixed rate whatever the answers.
Reports latency percentiles, requests/s, items/s and errors.

Both speak HTTP/1.1 over asyncio streams themselves, as wrk and hey do: the load generator
shares this machine's two cores with the service it measures, so what it spends per request
is taken from the service (and, in a closed loop, added to every latency). httpx's pooled
client spent ~3 ms of CPU per search answer here, a plain keep-alive connection ~1 ms
(bench/README.md, "The load generator")."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import httpx
import numpy as np

# Topics of the sample corpus (data/corpus.jsonl): load tests number them ("<topic> study N")
# so that no two queries are the same text and no answer comes from the cache.
TOPICS = (
    "seizures",
    "macrophages",
    "bone marrow",
    "HIV",
    "anthrax",
    "glioblastoma",
    "stem cells",
    "gluten",
    "open access",
    "passerine birds",
    "insulin",
    "T cells",
)


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    items_per_request: int
    latencies_ms: list[float] = field(repr=False, default_factory=list)
    ok_latencies_ms: list[float] = field(repr=False, default_factory=list)
    status_latencies_ms: dict[int, list[float]] = field(repr=False, default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds else 0.0

    @property
    def items_per_s(self) -> float:
        return self.rps * self.items_per_request

    def percentile(self, q: float, admitted_only: bool = False, status: int | None = None) -> float:
        """Latency percentile of every request, of the `ok` ones, or of those answered
        `status`."""
        if status is not None:
            values = self.status_latencies_ms.get(status, [])
        else:
            values = self.ok_latencies_ms if admitted_only else self.latencies_ms
        return float(np.percentile(values, q)) if values else float("nan")

    @classmethod
    def pooled(cls, runs: Sequence[LoadResult]) -> LoadResult:
        """One result of several runs at the same concurrency (rounds taking turns with
        other targets): counts and time added up, latencies together."""
        first = runs[0]
        pooled = cls(first.concurrency, 0, 0, 0.0, first.items_per_request)
        for run in runs:
            pooled.requests += run.requests
            pooled.errors += run.errors
            pooled.seconds += run.seconds
            pooled.latencies_ms += run.latencies_ms
            pooled.ok_latencies_ms += run.ok_latencies_ms
            for status, values in run.status_latencies_ms.items():
                pooled.status_latencies_ms.setdefault(status, []).extend(values)
            for status, count in run.statuses.items():
                pooled.statuses[status] = pooled.statuses.get(status, 0) + count
            for label, count in run.labels.items():
                pooled.labels[label] = pooled.labels.get(label, 0) + count
        return pooled

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("latencies_ms")
        data.pop("ok_latencies_ms")
        data.pop("status_latencies_ms")
        data.update(
            rps=self.rps,
            items_per_s=self.items_per_s,
            p50_ms=self.percentile(50),
            p90_ms=self.percentile(90),
            p95_ms=self.percentile(95),
            p99_ms=self.percentile(99),
        )
        return data


async def run_load(
    url: str,
    bodies: Sequence[dict[str, Any]],
    *,
    concurrency: int,
    duration_s: float,
    min_requests: int = 0,
    items_per_request: int = 1,
    warmup_requests: int = 2,
    timeout_s: float = 120.0,
    headers: dict[str, str] | None = None,
    ok: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
    classify: Callable[[httpx.Response], list[str]] | None = None,
) -> LoadResult:
    """Keep `concurrency` requests in flight for `duration_s` (and at least `min_requests`).

    Only requests started inside the measured window count; each worker finishes its last one.
    """
    target = httpx.URL(url)
    cycle = itertools.cycle(bodies)
    connections = [_Connection(target, timeout_s, headers) for _ in range(concurrency)]
    try:
        for _ in range(warmup_requests):
            await connections[0].post(_json(next(cycle)))
        result = LoadResult(concurrency, 0, 0, 0.0, items_per_request)
        started = time.perf_counter()

        async def worker(connection: _Connection) -> None:
            while time.perf_counter() - started < duration_s or result.requests < min_requests:
                result.requests += 1
                body = _json(next(cycle))
                await _send(partial(connection.post, body), result, ok, classify)

        await asyncio.gather(*(worker(connection) for connection in connections))
        result.seconds = time.perf_counter() - started
    finally:
        for connection in connections:
            connection.close()
    return result


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


class _Connection:
    """One closed-loop worker's keep-alive HTTP/1.1 connection: POSTs JSON, reads answers
    whose length is declared or chunked, and opens again after the server closed it (or a
    request failed)."""

    def __init__(self, url: httpx.URL, timeout_s: float, headers: dict[str, str] | None) -> None:
        self._host, self._port = url.host, url.port or 80
        self._timeout_s = timeout_s
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._head = (
            f"POST {url.raw_path.decode()} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            f"Content-Type: application/json\r\n{extra}Content-Length: "
        )
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, body: bytes) -> httpx.Response:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._exchange(body)
        except BaseException as exc:
            self.close()  # its state is unknown (even when cancelled): the next one opens anew
            broken = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)
            if isinstance(exc, broken):  # TimeoutError is an OSError
                raise httpx.TransportError(repr(exc)) from exc
            raise

    async def _exchange(self, body: bytes) -> httpx.Response:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._streams
        writer.write(f"{self._head}{len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        status, headers = _head(await reader.readuntil(b"\r\n\r\n"))
        fields = {name.lower(): value for name, value in headers}
        if "content-length" in fields:
            content = await reader.readexactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            content = await _chunked(reader)
        else:  # the answer ends where the connection does
            content = await reader.read()
            fields["connection"] = "close"
        if fields.get("connection", "").lower() == "close":
            self.close()
        return httpx.Response(status, headers=headers, content=content)

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)  # the chunk's CRLF
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
        pass
    return b"".join(parts)


def _head(raw: bytes) -> tuple[int, list[tuple[str, str]]]:
    """The status and headers of an answer's head (its status line and header lines)."""
    status_line, *lines = raw.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = [(name, value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    try:
        return int(status_line.split()[1]), headers
    except (IndexError, ValueError) as exc:
        raise httpx.RemoteProtocolError(f"not an HTTP answer: {status_line!r}") from exc


async def run_open_loop(
    url: str,
    bodies: Sequence[dict[str, Any]],
    *,
    rate_per_s: float,
    duration_s: float,
    max_outstanding: int = 1000,
    timeout_s: float = 60.0,
    classify: Callable[[httpx.Response], list[str]] | None = None,
) -> LoadResult:
    """Offer `rate_per_s` requests per second for `duration_s`, whatever the answers (an
    overload test: arrivals do not slow down because the server does). Requests beyond
    `max_outstanding` in flight are not sent and count as errors with status -1.

    Each request has a connection of its own: with hundreds in flight, a pooled client's
    bookkeeping (httpx's pool scans its connections per request) delayed answers by seconds on
    the client side, which would be blamed on the server."""
    target = httpx.URL(url)
    cycle = itertools.cycle(bodies)
    result = LoadResult(0, 0, 0, 0.0, 1)
    outstanding: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    interval = 1.0 / rate_per_s
    n = 0
    while (due := started + n * interval) < started + duration_s:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        result.requests += 1
        n += 1
        if len(outstanding) >= max_outstanding:
            result.statuses[-1] = result.statuses.get(-1, 0) + 1
            result.errors += 1
            continue
        payload = _json(next(cycle))
        task = asyncio.ensure_future(
            _send(partial(_post_alone, target, payload, timeout_s), result, _ok, classify)
        )
        outstanding.add(task)
        task.add_done_callback(outstanding.discard)
    await asyncio.gather(*outstanding)
    result.seconds = time.perf_counter() - started
    return result


async def _post_alone(url: httpx.URL, body: bytes, timeout_s: float) -> httpx.Response:
    """POST `body` (JSON) over a connection of its own, which the server closes after the
    answer."""
    connection = _Connection(url, timeout_s, {"Connection": "close"})
    try:
        return await connection.post(body)
    finally:
        connection.close()


def _ok(reply: httpx.Response) -> bool:
    return reply.status_code == 200


async def _send(
    request: Callable[[], Awaitable[httpx.Response]],
    result: LoadResult,
    ok: Callable[[httpx.Response], bool],
    classify: Callable[[httpx.Response], list[str]] | None,
) -> None:
    """One request, recorded in `result` (a transport error counts as status 0)."""
    sent = time.perf_counter()
    try:
        reply = await request()
        await reply.aread()
        status, good = reply.status_code, ok(reply)
        for label in classify(reply) if classify else ():
            result.labels[label] = result.labels.get(label, 0) + 1
    except httpx.HTTPError:
        status, good = 0, False
    elapsed_ms = (time.perf_counter() - sent) * 1000
    result.latencies_ms.append(elapsed_ms)
    result.status_latencies_ms.setdefault(status, []).append(elapsed_ms)
    if good:
        result.ok_latencies_ms.append(elapsed_ms)
    result.statuses[status] = result.statuses.get(status, 0) + 1
    if not good:
        result.errors += 1
