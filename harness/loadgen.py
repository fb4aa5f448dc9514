"""A closed-loop HTTP load generator (genai-perf style): C workers, each sends a request, waits
for the answer, sends the next. Reports latency percentiles, requests/s, items/s and errors."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    items_per_request: int
    latencies_ms: list[float] = field(repr=False, default_factory=list)
    ok_latencies_ms: list[float] = field(repr=False, default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds else 0.0

    @property
    def items_per_s(self) -> float:
        return self.rps * self.items_per_request

    def percentile(self, q: float, admitted_only: bool = False) -> float:
        values = self.ok_latencies_ms if admitted_only else self.latencies_ms
        return float(np.percentile(values, q)) if values else float("nan")

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("latencies_ms")
        data.pop("ok_latencies_ms")
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
                await _send(client, url, next(cycle), result, ok, classify)

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
    `max_outstanding` in flight are not sent and count as errors with status -1."""
    limits = httpx.Limits(
        max_connections=max_outstanding, max_keepalive_connections=max_outstanding
    )
    cycle = itertools.cycle(bodies)
    result = LoadResult(0, 0, 0, 0.0, 1)
    outstanding: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
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
            task = asyncio.ensure_future(_send(client, url, next(cycle), result, _ok, classify))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        await asyncio.gather(*outstanding)
        result.seconds = time.perf_counter() - started
    return result


def _ok(reply: httpx.Response) -> bool:
    return reply.status_code == 200


async def _send(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    result: LoadResult,
    ok: Callable[[httpx.Response], bool],
    classify: Callable[[httpx.Response], list[str]] | None,
) -> None:
    """One request, recorded in `result` (a transport error counts as status 0)."""
    sent = time.perf_counter()
    try:
        reply = await client.post(url, json=body)
        await reply.aread()
        status, good = reply.status_code, ok(reply)
        for label in classify(reply) if classify else ():
            result.labels[label] = result.labels.get(label, 0) + 1
    except httpx.HTTPError:
        status, good = 0, False
    elapsed_ms = (time.perf_counter() - sent) * 1000
    result.latencies_ms.append(elapsed_ms)
    if good:
        result.ok_latencies_ms.append(elapsed_ms)
    result.statuses[status] = result.statuses.get(status, 0) + 1
    if not good:
        result.errors += 1
