"""The spine as users run it: real processes on loopback ports, real models, real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, TRAINED_RERANKER, load_sample_queries
from tests.integration.conftest import SEMSEARCH, Service, child_env, free_port, start_service

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def search(url: str, body: dict[str, object], request_id: str | None = None) -> dict[str, object]:
    headers = {"x-request-id": request_id} if request_id else {}
    reply = httpx.post(f"{url}/v1/search", json=body, headers=headers, timeout=60)
    assert reply.status_code == 200, reply.text
    data: dict[str, object] = reply.json()
    return data


def logged(service: Service, request_id: str, within_s: float = 5.0) -> bool:
    """Whether `service` logs a line with `request_id` within `within_s`: a service writes its
    request line once the answer is sent, so the caller may read the log before it is there
    (the full suite once found the reranker's line missing a moment after the answer)."""
    deadline = time.monotonic() + within_s
    while True:
        lines = [json.loads(line) for line in service.logs().splitlines() if line.startswith("{")]
        if any(line.get("request_id") == request_id for line in lines):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_three_services_as_processes_with_redis(
    real_index: Path,
    redis_url: str,
    tiny_cross_encoder: Path,
    log_dir: Path,
    services: list[Service],
) -> None:
    reranker_dir = TRAINED_RERANKER if TRAINED_RERANKER.is_dir() else tiny_cross_encoder
    e_port, r_port, g_port = free_port(), free_port(), free_port()
    # one service through uvicorn's own entry point, the others through the CLI
    services.append(
        start_service(
            "embedder",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "services.embedder.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(e_port),
            ],
            e_port,
            child_env(),
            log_dir,
        )
    )
    services.append(
        start_service(
            "reranker",
            [SEMSEARCH, "serve", "reranker", "--port", str(r_port)],
            r_port,
            child_env(SEMSEARCH_RERANKER_MODEL=str(reranker_dir)),
            log_dir,
        )
    )
    gateway = start_service(
        "gateway",
        [SEMSEARCH, "serve", "gateway", "--port", str(g_port)],
        g_port,
        child_env(
            SEMSEARCH_INDEX_DIR=str(real_index),
            SEMSEARCH_EMBEDDER_URL=services[0].url,
            SEMSEARCH_RERANKER_URL=services[1].url,
            SEMSEARCH_REDIS_URL=redis_url,
        ),
        log_dir,
    )
    services.append(gateway)

    ready = httpx.get(f"{gateway.url}/ready").json()["components"]
    assert ready["embedder"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert ready["cache"] == "redis"

    for query in load_sample_queries():
        dense = search(
            gateway.url, {"query": query["text"], "mode": "dense", "rerank": False, "top_k": 5}
        )
        assert dense["results"][0]["document_id"] == query["expected_id"], query  # type: ignore[index]
        reranked = search(gateway.url, {"query": query["text"], "mode": "dense", "top_k": 5})
        assert reranked["reranked"] is True
        assert reranked["degraded"] == []
        if reranker_dir == TRAINED_RERANKER:  # the sample queries were picked on dense pools
            assert reranked["results"][0]["document_id"] == query["expected_id"], query  # type: ignore[index]
        hybrid = search(gateway.url, {"query": query["text"], "top_k": 5})
        assert (hybrid["reranked"], hybrid["degraded"]) == (True, [])
        assert query["expected_id"] in [hit["document_id"] for hit in hybrid["results"]], query  # type: ignore[index]

    # the request id given to the gateway reaches the model services' logs
    first = load_sample_queries()[0]["text"]
    search(gateway.url, {"query": first + " (traced)"}, request_id="trace-me-42")
    for service in services:
        assert logged(service, "trace-me-42"), service.name

    # a second identical query comes from Redis
    body = {"query": "Which cells contribute to adult macrophages?", "top_k": 3}
    assert search(gateway.url, body)["cached"] is False
    again = search(gateway.url, body)
    assert again["cached"] is True
    assert "embed" not in again["timings_ms"]

    # `semsearch search` prints results from the running gateway
    printed = subprocess.run(
        [
            SEMSEARCH,
            "search",
            load_sample_queries()[1]["text"],
            "--url",
            gateway.url,
            "--json",
            "--no-rerank",
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert printed.returncode == 0, printed.stderr
    assert (
        json.loads(printed.stdout)["results"][0]["document_id"]
        == load_sample_queries()[1]["expected_id"]
    )

    # /metrics is Prometheus text on every service
    for service in services:
        text = httpx.get(f"{service.url}/metrics").text
        assert "semsearch_http_requests_total" in text


def test_embedded_default_as_one_process(
    real_index: Path, log_dir: Path, services: list[Service]
) -> None:
    """`semsearch serve gateway` with no URLs: both models in-process. The default reranker is a
    hub id, which cannot load offline: answers come in ANN order, flagged, with one clear log
    line naming the setting to fix it."""
    port = free_port()
    gateway = start_service(
        "embedded",
        [SEMSEARCH, "serve", "gateway", "--port", str(port)],
        port,
        child_env(SEMSEARCH_INDEX_DIR=str(real_index)),
        log_dir,
    )
    services.append(gateway)
    # with a lexical index the gateway is ready (answering from words) while its embedder loads:
    # wait for both models to settle
    for _ in range(600):  # the hub lookup fails fast offline
        components = httpx.get(f"{gateway.url}/ready").json()["components"]
        status = components["reranker"]["status"]
        if status != "loading" and components["embedder"]["status"] != "loading":
            break
        import time

        time.sleep(0.1)
    assert status.startswith("failed")

    for query in load_sample_queries():
        result = search(gateway.url, {"query": query["text"], "mode": "dense"})
        assert result["results"][0]["document_id"] == query["expected_id"], query  # type: ignore[index]
        assert result["reranked"] is False
        assert result["degraded"] == ["reranker"]
        hybrid = search(gateway.url, {"query": query["text"]})  # the default mode
        assert (hybrid["reranked"], hybrid["degraded"]) == (False, ["reranker"])
        assert query["expected_id"] in [hit["document_id"] for hit in hybrid["results"]], query  # type: ignore[index]

    failures = [
        json.loads(line)
        for line in gateway.logs().splitlines()
        if line.startswith("{") and '"model_load_failed"' in line
    ]
    assert len(failures) == 1
    assert "SEMSEARCH_RERANKER_MODEL" in failures[0]["hint"]

    bad = httpx.post(f"{gateway.url}/v1/search", json={"query": ""})
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "query"
