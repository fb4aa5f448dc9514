"""HTTP load generators. Closed loop (genai-perf style): C workers, each sends a request, waits
for the answer, sends the next. Open loop: requests at a fixed rate whatever the answers.
Reports latency percentiles, requests/s, items/s and errors."""

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
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    cycle = itertools.cycle(bodies)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, headers=headers) as client:
        for _ in range(warmup_requests):
            await client.post(url, json=next(cycle))
        result = LoadResult(concurrency, 0, 0, 0.0, items_per_request)
        started = time.perf_counter()

        async def worker() -> None:
            while time.perf_counter() - started < duration_s or result.requests < min_requests:
                result.requests += 1
                body = next(cycle)
                await _send(partial(client.post, url, json=body), result, ok, classify)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - started
    return result


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
        payload = json.dumps(next(cycle)).encode()
        task = asyncio.ensure_future(
            _send(partial(_post_alone, target, payload, timeout_s), result, _ok, classify)
        )
        outstanding.add(task)
        task.add_done_callback(outstanding.discard)
    await asyncio.gather(*outstanding)
    result.seconds = time.perf_counter() - started
    return result


async def _post_alone(url: httpx.URL, body: bytes, timeout_s: float) -> httpx.Response:
    """POST `body` (JSON) over a connection of its own (HTTP/1.1, closed by the server after
    the answer, whose length it declares)."""

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            head = (
                f"POST {url.raw_path.decode()} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
                "Content-Type: application/json\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()

    try:
        raw = await asyncio.wait_for(exchange(), timeout_s)
    except (OSError, TimeoutError) as exc:
        raise httpx.TransportError(repr(exc)) from exc
    head, _, content = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [(name, value) for name, _, value in (line.partition(": ") for line in lines)]
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError) as exc:
        raise httpx.RemoteProtocolError(f"not an HTTP answer: {status_line!r}") from exc
    return httpx.Response(status, headers=headers, content=content)


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
