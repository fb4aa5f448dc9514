"""What a call to a model service costs the gateway's event loop: our client against httpx.

    python -m bench.http_client            # ~1 min

The embedder service runs as a real process (fake model: no compute, so the numbers are the
HTTP exchange's own). In the benchmark's process, one event loop sends embeddings calls for one
query, one at a time and from 8 concurrent tasks, through:

- httpx: the strongest simple version a user would write (one pooled `httpx.AsyncClient`,
  `json=`, the answer parsed by the same pydantic model), which the gateway used until now;
- semsearch: `HttpEmbedder.embed` (aiohttp underneath), the whole client the gateway calls:
  headers, deadline, error mapping, base64 decoding.

Reported: CPU time of the client's process per call (what the gateway's loop spends, which
under overload is its bottleneck) and wall time per call, each round after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench.common import machine, table, write_json
from harness.processes import child_env, free_port, start_service

QUERY = "what is the effect of vitamin D on bone density in older adults"


async def measure(call: Callable[[], Awaitable[Any]], calls: int, tasks: int) -> dict[str, float]:
    async def worker() -> None:
        for _ in range(calls // tasks):
            await call()

    for _ in range(50):
        await call()
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    n = (calls // tasks) * tasks
    return {
        "cpu_ms_per_call": (time.process_time() - cpu) / n * 1000,
        "wall_ms_per_call": (time.perf_counter() - wall) / n * 1000,
    }


async def run(url: str, calls: int) -> list[dict[str, Any]]:
    from app.models.http import HttpEmbedder
    from app.protocol.embeddings import EmbeddingsResponse
    from app.types import InputType

    ours = HttpEmbedder(url, 10)
    await ours.start()
    body = {"input": [QUERY], "input_type": "query", "encoding_format": "base64"}
    rows: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as baseline:

        async def with_httpx() -> None:
            reply = await baseline.post("/v1/embeddings", json=body)
            EmbeddingsResponse.model_validate_json(reply.content).vectors()

        async def with_ours() -> None:
            await ours.embed([QUERY], InputType.QUERY)

        for tasks in (1, 8):
            for name, call in (("httpx", with_httpx), ("semsearch", with_ours)):
                result = await measure(call, calls, tasks)
                rows.append({"client": name, "concurrent": tasks, **result})
    await ours.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as logs:
        service = start_service(
            "embedder",
            [
                str(Path(sys.executable).with_name("semsearch")),
                "serve",
                "embedder",
                "--port",
                str(port),
            ],
            port,
            child_env(SEMSEARCH_EMBEDDER_BACKEND="fake", SEMSEARCH_LOG_LEVEL="warning"),
            Path(logs),
        )
        try:
            rows = asyncio.run(run(service.url, args.calls))
        finally:
            service.stop()
    for tasks in (1, 8):
        base, ours = (r for r in rows if r["concurrent"] == tasks)
        ours["cpu_vs_httpx"] = ours["cpu_ms_per_call"] / base["cpu_ms_per_call"]
    print(
        table(rows, ["client", "concurrent", "cpu_ms_per_call", "wall_ms_per_call", "cpu_vs_httpx"])
    )
    path = write_json("http_client", {"machine": machine(), "calls": args.calls, "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
