"""The gateway killed with SIGKILL while clients write batches of documents over HTTP, then
restarted: every acknowledged document is searchable exactly once, and no document is
half-written (its chunks are all there or none is)."""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from app.index.faiss.layout import CollectionLayout
from app.ingest.chunking import Chunker, WordTokenizer
from app.models.fake import FAKE_MAX_TOKENS
from app.types import Document
from harness.processes import Service, child_env, free_port, start_service
from tests.integration.conftest import SEMSEARCH

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CLIENTS = 4
BATCH = 10


def text_of(doc_id: str, words: int) -> str:
    # a word of its own, to find it by; long enough (for some) to be cut into chunks
    return f"marker{doc_id.replace('-', '')} " + " ".join(
        f"w{(i * 7919) % 5000}" for i in range(words)
    )


class Writer(threading.Thread):
    """Sends batches until told to stop; keeps what was acknowledged (202) and what was sent
    without an answer (the kill cut it)."""

    def __init__(self, url: str, number: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.number = number
        self.rng = random.Random(seed * 100 + number)
        self.acknowledged: dict[str, str] = {}  # doc id -> write id
        self.unanswered: list[str] = []
        self.sizes: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        batch_number = 0
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                ids = [f"c{self.number}-b{batch_number}-d{i}" for i in range(BATCH)]
                batch_number += 1
                documents = []
                for doc_id in ids:
                    self.sizes[doc_id] = self.rng.choice([20, 300, 700])
                    documents.append({"id": doc_id, "text": text_of(doc_id, self.sizes[doc_id])})
                try:
                    reply = client.post(
                        f"{self.url}/v1/collections/crash/documents", json={"documents": documents}
                    )
                except httpx.HTTPError:
                    self.unanswered += ids
                    return  # the gateway is gone
                if reply.status_code == 202:
                    for doc_id in ids:
                        self.acknowledged[doc_id] = reply.json()["write_id"]
                else:
                    assert reply.status_code == 429, reply.text  # a full journal, nothing else


def published_records(index_dir: Path) -> list[str]:
    layout = CollectionLayout(index_dir, "crash")
    generation = layout.current_generation()
    if generation == 0:
        return []
    with sqlite3.connect(layout.generation_path(generation) / "docs.sqlite") as db:
        return [row[0] for row in db.execute("SELECT id FROM docs")]


def start_gateway(env: dict[str, str], port: int, logs: Path, name: str) -> Service:
    # /health: a gateway with no collection yet is not ready (/ready wants the default one)
    command = [SEMSEARCH, "serve", "gateway", "--port", str(port)]
    return start_service(name, command, port, env, logs, ready_path="/health")


@pytest.mark.parametrize("seed", [1, 2])
def test_gateway_killed_while_clients_write(tmp_path: Path, seed: int) -> None:
    index_dir = tmp_path / "index"
    port = free_port()
    env = child_env(
        SEMSEARCH_EMBEDDER_BACKEND="fake",
        SEMSEARCH_RERANKER_BACKEND="fake",
        SEMSEARCH_INDEX_DIR=str(index_dir),
        SEMSEARCH_DEFAULT_COLLECTION="crash",
        SEMSEARCH_REFRESH_INTERVAL_S="0.3",
        SEMSEARCH_LOG_LEVEL="warning",
    )
    gateway = start_gateway(env, port, tmp_path, "gateway-1")
    try:
        assert httpx.put(f"{gateway.url}/v1/collections/crash", json={}).status_code == 201
        writers = [Writer(gateway.url, n, seed) for n in range(CLIENTS)]
        for writer in writers:
            writer.start()
        time.sleep(random.Random(seed).uniform(1.5, 4.0))
        gateway.proc.send_signal(signal.SIGKILL)
        gateway.proc.wait(10)
    finally:
        gateway.stop()
    for writer in writers:
        writer.stop.set()
        writer.join(30)
    acknowledged = {d: w for writer in writers for d, w in writer.acknowledged.items()}
    unanswered = {d for writer in writers for d in writer.unanswered}
    sizes = {d: n for writer in writers for d, n in writer.sizes.items()}
    assert len(acknowledged) >= BATCH, "too few writes before the kill to prove anything"

    restarted = start_gateway(env, port, tmp_path, "gateway-2")
    try:
        with httpx.Client(base_url=restarted.url, timeout=30) as client:
            deadline = time.monotonic() + 120
            for write_id in set(acknowledged.values()):
                while True:
                    status = client.get(f"/v1/collections/crash/writes/{write_id}").json()
                    if status["status"] == "searchable":
                        break
                    assert status["status"] == "pending", status
                    assert time.monotonic() < deadline, f"write {write_id} never became searchable"
                    time.sleep(0.1)
            # searchable through the API: a search for its own word finds it, once
            for doc_id in random.Random(seed).sample(sorted(acknowledged), 10):
                reply = client.post(
                    "/v1/search",
                    json={
                        "query": f"marker{doc_id.replace('-', '')}",
                        "collection": "crash",
                        "mode": "lexical",
                        "rerank": False,
                    },
                )
                hits = [h["id"] for h in reply.json()["results"]]
                # its word is in its first chunk only: found once, not twice
                assert [h.split("#")[0] for h in hits].count(doc_id) == 1, hits
                assert client.get(f"/v1/collections/crash/documents/{doc_id}").json()["searchable"]
    finally:
        restarted.stop()

    records = published_records(index_dir)
    assert len(records) == len(set(records)), "a record is published twice"
    by_document = Counter(record.split("#")[0] for record in records)
    for doc_id in acknowledged:  # every acknowledged document, whole
        assert by_document[doc_id] == len(expected_chunks(doc_id, sizes[doc_id])), doc_id
    for doc_id in unanswered:  # those cut by the kill: whole or absent
        assert by_document[doc_id] in (0, len(expected_chunks(doc_id, sizes[doc_id]))), doc_id
    assert set(by_document) <= set(sizes)
    print(
        f"\nWRITE CRASH seed {seed}: {len(acknowledged)} documents acknowledged, "
        f"{len(unanswered)} unanswered at the kill ({sum(by_document[d] > 0 for d in unanswered)}"
        f" of them applied whole), {len(records)} records published"
    )


def expected_chunks(doc_id: str, words: int) -> list[Document]:
    chunker = Chunker(WordTokenizer(FAKE_MAX_TOKENS))
    return chunker.split(Document(doc_id, text_of(doc_id, words)))
