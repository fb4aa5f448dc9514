"""Start order does not matter: a gateway started before its model services becomes ready on its
own, with no search sent (on Kubernetes, readiness gates traffic: no search would ever come)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import DATA, ROOT
from tests.integration.conftest import SEMSEARCH, Service, child_env, free_port, start_service

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory: pytest.TempPathFactory, tiny_bi_encoder: Path) -> Path:
    index_dir = tmp_path_factory.mktemp("start-order-index")
    indexed = subprocess.run(
        [SEMSEARCH, "index", str(DATA / "corpus.jsonl")],
        env=child_env(
            SEMSEARCH_EMBEDDER_MODEL=str(tiny_bi_encoder),
            SEMSEARCH_INDEX_DIR=str(index_dir),
            # dense only: with a lexical index a gateway is ready before its embedder (it
            # answers from words meanwhile); this test is about the embedder becoming ready
            SEMSEARCH_LEXICAL_INDEX="false",
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert indexed.returncode == 0, indexed.stderr + indexed.stdout
    return index_dir


@pytest.mark.parametrize(
    "order",
    [("gateway", "reranker", "embedder"), ("reranker", "gateway", "embedder")],
    ids=["reverse", "gateway-between"],
)
def test_the_gateway_becomes_ready_whatever_the_start_order(
    order: tuple[str, ...],
    tiny_index: Path,
    tiny_bi_encoder: Path,
    tiny_cross_encoder: Path,
    log_dir: Path,
    services: list[Service],
) -> None:
    ports = {name: free_port() for name in order}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = {
        "embedder": child_env(SEMSEARCH_EMBEDDER_MODEL=str(tiny_bi_encoder)),
        "reranker": child_env(
            SEMSEARCH_RERANKER_MODEL=str(tiny_cross_encoder), SEMSEARCH_RERANKER_MAX_LENGTH="128"
        ),
        "gateway": child_env(
            SEMSEARCH_INDEX_DIR=str(tiny_index),
            SEMSEARCH_EMBEDDER_URL=url["embedder"],
            SEMSEARCH_RERANKER_URL=url["reranker"],
        ),
    }
    for name in order:
        command = [SEMSEARCH, "serve", name, "--port", str(ports[name])]
        # each is up (answers /health) before the next starts; only the model services are
        # waited for until ready, the gateway must get there by itself
        ready_path = "/health" if name == "gateway" else "/ready"
        services.append(start_service(name, command, ports[name], env[name], log_dir, ready_path))
        if name == "gateway" and name != order[-1]:
            assert httpx.get(f"{url['gateway']}/ready").status_code == 503

    started = time.monotonic()
    while (reply := httpx.get(f"{url['gateway']}/ready")).status_code != 200:
        assert time.monotonic() - started < 30, reply.text
        time.sleep(0.2)
    components = reply.json()["components"]
    assert components["embedder"]["status"] == "ready"
    assert components["reranker"]["status"] == "ready"
    metrics = httpx.get(f"{url['gateway']}/metrics").text.splitlines()
    assert [m for m in metrics if 'route="/v1/search"' in m] == []  # no search was sent
    print(
        f"\nSTART ORDER {'->'.join(order)}: ready {time.monotonic() - started:.1f}s after the last"
    )
