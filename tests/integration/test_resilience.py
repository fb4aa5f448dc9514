"""Resilience, proven with real processes, real kills and real load (issue: resilience).

One stack per module: redis-server, the embedder and reranker services (tiny real models),
and a gateway with a FAISS fallback index whose primary can be made to fail. Each scenario
runs closed-loop load (harness.loadgen) while a part is killed or broken, prints its counts, and
leaves the stack healthy for the next.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.loadgen import TOPICS, LoadResult, run_load, run_open_loop
from harness.processes import Service, child_env, free_port, start_service
from tests.conftest import DATA, ROOT, start_redis
from tests.integration.conftest import SEMSEARCH

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DEADLINE_MS = 2000
RECOVERY_S = 2.0
MAX_INFLIGHT = 24
# Clients the stack serves on two cores without queueing: the fault tests run at this load,
# so what they see is the fault, not overload (which has a test of its own).
SUSTAINABLE_CLIENTS = 8


@dataclass
class Stack:
    gateway: Service
    embedder: Service
    reranker: Service
    redis: subprocess.Popen[bytes]
    redis_port: int
    fault_file: Path
    logs: Path
    env: dict[str, dict[str, str]]

    def restart(self, name: str) -> Service:
        old: Service = getattr(self, name)
        old.stop()
        port = int(old.url.rsplit(":", 1)[1])
        new = start_service(
            name, [SEMSEARCH, "serve", name, "--port", str(port)], port, self.env[name], self.logs
        )
        setattr(self, name, new)
        return new

    def metric(self, line_prefix: str) -> float:
        for line in httpx.get(f"{self.gateway.url}/metrics").text.splitlines():
            if line.startswith(line_prefix):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def search_latency(self, status: int) -> dict[float, float]:
        """The gateway's own histogram of /v1/search answered with `status`: {le: count}."""
        buckets: dict[float, float] = {}
        for line in httpx.get(f"{self.gateway.url}/metrics").text.splitlines():
            if (
                line.startswith("semsearch_http_request_duration_seconds_bucket{")
                and 'route="/v1/search"' in line
                and f'status="{status}"' in line
            ):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                buckets[float(le)] = float(line.rsplit(" ", 1)[1])
        return buckets


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_bi_encoder: Path, tiny_cross_encoder: Path
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    logs = root / "logs"
    logs.mkdir()
    index_env = child_env(
        SEMSEARCH_EMBEDDER_MODEL=str(tiny_bi_encoder),
        SEMSEARCH_INDEX_DIR=str(root / "primary"),
        SEMSEARCH_FALLBACK_INDEX_DIR=str(root / "fallback"),
    )
    indexed = subprocess.run(
        [SEMSEARCH, "index", str(DATA / "corpus.jsonl")],
        env=index_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert indexed.returncode == 0, indexed.stderr + indexed.stdout

    redis_port = free_port()
    redis = start_redis(redis_port, root)
    # Two model services on two cores: one thread each (see SEMSEARCH_*_THREADS).
    env = {
        "embedder": child_env(
            SEMSEARCH_EMBEDDER_MODEL=str(tiny_bi_encoder), SEMSEARCH_EMBEDDER_THREADS="1"
        ),
        "reranker": child_env(
            SEMSEARCH_RERANKER_MODEL=str(tiny_cross_encoder),
            SEMSEARCH_RERANKER_MAX_LENGTH="128",
            SEMSEARCH_RERANKER_THREADS="1",
        ),
    }
    e_port, r_port, g_port = free_port(), free_port(), free_port()
    embedder = start_service(
        "embedder",
        [SEMSEARCH, "serve", "embedder", "--port", str(e_port)],
        e_port,
        env["embedder"],
        logs,
    )
    reranker = start_service(
        "reranker",
        [SEMSEARCH, "serve", "reranker", "--port", str(r_port)],
        r_port,
        env["reranker"],
        logs,
    )
    fault_file = root / "primary-index-down"
    gateway_env = child_env(
        SEMSEARCH_INDEX_DIR=str(root / "primary"),
        SEMSEARCH_FALLBACK_INDEX_DIR=str(root / "fallback"),
        SEMSEARCH_EMBEDDER_URL=embedder.url,
        SEMSEARCH_RERANKER_URL=reranker.url,
        SEMSEARCH_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        SEMSEARCH_SEARCH_TIMEOUT_MS=str(DEADLINE_MS),
        SEMSEARCH_BREAKER_RECOVERY_S=str(RECOVERY_S),
        SEMSEARCH_MAX_INFLIGHT_SEARCHES=str(MAX_INFLIGHT),
        SEMSEARCH_LOG_LEVEL="warning",
        CHAOS_INDEX_FAULT_FILE=str(fault_file),
    )
    gateway = start_service(
        "gateway",
        [sys.executable, str(ROOT / "tests" / "integration" / "chaos_gateway.py"), str(g_port)],
        g_port,
        gateway_env,
        logs,
    )
    built = Stack(gateway, embedder, reranker, redis, redis_port, fault_file, logs, env)
    yield built
    for service in (built.gateway, built.embedder, built.reranker):
        service.stop()
    if built.redis.poll() is None:
        built.redis.terminate()
        built.redis.wait(10)


_counter = iter(range(10**9))


def unique_queries(n: int) -> list[dict[str, Any]]:
    """Never the same text twice, so no answer comes from the cache."""
    return [
        {"query": f"{TOPICS[i % len(TOPICS)]} study {next(_counter)}", "top_k": 5} for i in range(n)
    ]


def labels(reply: httpx.Response) -> list[str]:
    body = reply.json()
    if reply.status_code != 200:
        return [f"{reply.status_code}:{body['error']['type']}"]
    out = [f"degraded:{stage}" for stage in body["degraded"]]
    if body["cached"]:
        out.append("cached")
    if body["reranked"]:
        out.append("reranked")
    return out


def load(
    stack: Stack,
    bodies: list[dict[str, Any]],
    concurrency: int = 20,
    duration_s: float = 10.0,
    **kwargs: Any,
) -> Future[LoadResult]:
    """Closed-loop load on a thread, so the test can break things while it runs."""
    pool = ThreadPoolExecutor(1)
    return pool.submit(
        lambda: asyncio.run(
            run_load(
                f"{stack.gateway.url}/v1/search",
                bodies,
                concurrency=concurrency,
                duration_s=duration_s,
                classify=labels,
                warmup_requests=0,
                timeout_s=30,
                **kwargs,
            )
        )
    )


def report(name: str, result: LoadResult) -> None:
    counts = {
        "requests": result.requests,
        "failed": result.errors,
        "statuses": result.statuses,
        "labels": result.labels,
        "p99_ms": round(result.percentile(99), 1),
        "p99_admitted_ms": round(result.percentile(99, admitted_only=True), 1),
    }
    print(f"\nRESILIENCE {name}: {json.dumps(counts)}")


def search(stack: Stack, query: str) -> dict[str, Any]:
    reply = httpx.post(f"{stack.gateway.url}/v1/search", json={"query": query}, timeout=30)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def test_reranker_killed_and_restarted_under_load_five_times(stack: Stack) -> None:
    """kill -9 the reranker and start it again while 16 clients search with reranking: the CPU
    is saturated (the reranker reloading its model) but the embedder is alive, so no search
    may be refused as if it were down, nor run out of time."""
    for round_ in range(1, 6):
        running = load(stack, unique_queries(20_000), concurrency=16, duration_s=10)
        time.sleep(2)
        stack.reranker.proc.kill()  # SIGKILL: no goodbye
        stack.restart("reranker")  # under the same load: it reloads its model meanwhile
        result = running.result()
        report(f"kill -9 + restart reranker, round {round_}", result)
        assert set(result.statuses) <= {200, 429}, result.labels
        assert "503:embedder_unavailable" not in result.labels
        assert result.labels.get("reranked", 0) > 0
        assert result.labels.get("degraded:reranker", 0) > 0
    assert stack.metric('semsearch_circuit_calls_total{name="embedder",outcome="hang"}') == 0
    started = time.monotonic()
    while not search(stack, f"recovered {time.monotonic()}")["reranked"]:
        assert time.monotonic() - started < 5, "reranking did not come back"
        time.sleep(0.1)
    assert stack.metric('semsearch_circuit_open{name="reranker"}') == 0


def test_redis_killed_under_load(stack: Stack) -> None:
    repeated = unique_queries(10) * 2000  # repeats: the cache is in use until it dies
    running = load(stack, repeated, concurrency=SUSTAINABLE_CLIENTS, duration_s=8)
    time.sleep(2)
    stack.redis.kill()
    result = running.result()
    report("kill -9 redis", result)
    assert result.errors == 0
    assert result.labels.get("cached", 0) > 0
    assert stack.metric('semsearch_cache_requests_total{operation="get",result="error"}') > 0
    stack.redis = start_redis(stack.redis_port, stack.logs)


def test_primary_index_failure_is_served_by_the_fallback(stack: Stack) -> None:
    running = load(stack, unique_queries(20_000), concurrency=SUSTAINABLE_CLIENTS, duration_s=8)
    time.sleep(2)
    stack.fault_file.touch()
    time.sleep(3)
    stack.fault_file.unlink()
    result = running.result()
    report("primary index failing", result)
    assert result.errors == 0
    assert result.labels.get("degraded:index", 0) > 0
    time.sleep(RECOVERY_S + 0.5)
    search(stack, "warm the probe")  # the half-open probe closes the circuit
    assert search(stack, "after the fault")["degraded"] == []


def test_overload_degrades_then_sheds_in_milliseconds_and_admitted_searches_end_early(
    stack: Stack,
) -> None:
    """Measure the sustainable rate (closed loop, reranking on), then offer four times that
    open-loop: arrivals keep coming whatever the answers, as in a real traffic spike.

    Latencies are asserted on the gateway's own histogram (from the request reaching the app to
    its answer): on two cores shared with the models and the load generator, what the load
    generator measures also holds its own and the gateway's waits for a CPU (hundreds of ms on
    a busy machine); it is printed beside them, and only the client's 429 p50 is bounded,
    loosely, against the seconds it took when the gateway was starved of CPU."""
    capacity = load(
        stack, unique_queries(20_000), concurrency=SUSTAINABLE_CLIENTS, duration_s=6
    ).result()
    report(f"sustainable ({SUSTAINABLE_CLIENTS} clients, closed loop)", capacity)
    before = {status: stack.search_latency(status) for status in (200, 429)}
    rate = 4 * capacity.rps
    pool = ThreadPoolExecutor(1)
    result = pool.submit(
        lambda: asyncio.run(
            run_open_loop(
                f"{stack.gateway.url}/v1/search",
                unique_queries(50_000),
                rate_per_s=rate,
                duration_s=10,
                classify=labels,
            )
        )
    ).result()
    after = {status: stack.search_latency(status) for status in (200, 429)}
    admitted, refused = (
        {le: count - before[status].get(le, 0.0) for le, count in after[status].items()}
        for status in (200, 429)
    )
    answered = result.statuses.get(200, 0) / result.seconds
    client_429 = [round(result.percentile(q, status=429), 1) for q in (50, 99)]
    report(
        f"overload: {rate:.0f}/s offered (4x the measured {capacity.rps:.1f}/s), "
        f"{answered:.1f}/s answered; in the gateway {admitted.get(1.0, 0):.0f}/"
        f"{admitted.get(math.inf, 0):.0f} answers within 1 s, {refused.get(0.05, 0):.0f}/"
        f"{refused.get(math.inf, 0):.0f} 429s within 50 ms; at the client 429 p50/p99 "
        f"{client_429} ms",
        result,
    )
    assert set(result.statuses) <= {200, 429}
    assert result.statuses.get(429, 0) > 0
    assert DEADLINE_MS / 2 == 1000  # the histogram has a bucket at 1 s
    assert admitted[1.0] >= 0.99 * admitted[math.inf]
    assert refused[0.05] >= 0.99 * refused[math.inf]
    # overload is not an outage: at least the closed-loop capacity is answered (skipping
    # reranking for some makes room for more), although the open-loop generator and the 429s
    # share the two cores. Measured here 1.9-2.7x; 0.96-1.10x while the gateway called the
    # model services through httpx, whose CPU per call starved its event loop.
    assert answered >= capacity.rps
    # The client's own view of a refusal, as a loose smoke check only (see the docstring: it
    # includes the load generator's turns on the shared cores): p50 26-142 ms here. While the
    # models' compute ran at the gateway's priority, the gateway got too little CPU to accept
    # connections as fast as they came, and clients waited 0.7-2.8 s in the kernel's accept
    # queue for a 429 made in 50 ms.
    assert client_429[0] < 500


def test_schemathesis_finds_no_server_error(stack: Stack, tmp_path: Path) -> None:
    tool = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [
            str(tool),
            "run",
            f"{stack.gateway.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "60",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # schemathesis keeps a cache in its working directory
    )
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]


def test_embedder_killed_searches_answer_from_the_lexical_index(stack: Stack) -> None:
    """No query vector: every search is answered from BM25, flagged, in time, and the
    embedder's breaker opens; full (hybrid) answers return within 2 s of its restart."""
    # Calm load first: the admission limit may still remember the overload test's spike.
    load(stack, unique_queries(1000), concurrency=SUSTAINABLE_CLIENTS, duration_s=2).result()
    stack.embedder.proc.kill()
    result = load(
        stack, unique_queries(20_000), concurrency=SUSTAINABLE_CLIENTS, duration_s=6
    ).result()
    report("embedder killed", result)
    assert result.errors == 0 and set(result.statuses) == {200}
    assert result.labels.get("degraded:embedder", 0) == result.requests
    assert max(result.latencies_ms) < DEADLINE_MS + 500  # nothing hangs past the deadline
    assert stack.metric('semsearch_circuit_open{name="embedder"}') == 1
    body = search(stack, "anything at all")
    assert body["mode"] == "lexical" and body["degraded"][0] == "embedder"
    assert body["results"] and all(r["found_by"] == ["lexical"] for r in body["results"])

    stack.restart("embedder")  # returns once its /ready answers 200
    started = time.monotonic()
    while True:
        reply = httpx.post(
            f"{stack.gateway.url}/v1/search", json={"query": f"back {time.monotonic()}"}
        )
        if reply.status_code == 200 and "embedder" not in reply.json()["degraded"]:
            break
        assert time.monotonic() - started < 2, reply.text
        time.sleep(0.05)
    assert reply.json()["mode"] == "hybrid"
    print(f"RESILIENCE full answers {time.monotonic() - started:.2f}s after the restart")
    assert stack.metric('semsearch_circuit_open{name="embedder"}') == 0
