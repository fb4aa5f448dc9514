"""Writes over HTTP: search latency while a large batch is ingested, and ingestion speed over
HTTP against `semsearch index`, measured in the same run.

    python -m bench.writes ../shared/datasets/scifact/corpus.jsonl --documents 5000

One gateway process (the default in-process embedder, all-MiniLM-L6-v2; a fake reranker and
`rerank: false`, so a search's cost is what writes compete with: the query embedding, ANN
and BM25) serves `data/corpus.jsonl`. Phases:

1. idle: closed-loop searches (distinct queries, so no answer comes from the cache);
2. load: the same searches while N documents are written over HTTP to another collection
   (batches of 100 from two clients, then until the last write is searchable);
3. alone: the same N documents written over HTTP to a third collection, no searches: the
   rate set against the CLI's (`--phases alone,cli` measures only that);
4. cli: `semsearch index` of the same N documents into a fresh collection, the gateway
   stopped (the machine is the same for both); its own rate (model load excluded, as the
   gateway's model was loaded before the ingest started).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import table, write_json
from harness.loadgen import TOPICS, LoadResult, run_load
from harness.processes import ROOT, child_env, free_port, start_service

SEMSEARCH = str(Path(sys.executable).with_name("semsearch"))


def queries(offset: int, n: int) -> list[dict[str, Any]]:
    """Distinct texts (numbered from `offset`): no answer comes from the cache."""
    return [
        {"query": f"{TOPICS[i % len(TOPICS)]} study {i}", "top_k": 10, "rerank": False}
        for i in range(offset, offset + n)
    ]


def search_load(url: str, seconds: float, concurrency: int, offset: int) -> LoadResult:
    bodies = queries(offset, 20_000)
    return asyncio.run(
        run_load(
            f"{url}/v1/search",
            bodies,
            concurrency=concurrency,
            duration_s=seconds,
            warmup_requests=0,
        )
    )


def ingest_http(
    url: str, collection: str, documents: list[dict[str, Any]], batch: int = 100
) -> dict[str, Any]:
    """Two clients write batches to `collection` (created here); then wait until the last
    write is searchable."""
    httpx.put(f"{url}/v1/collections/{collection}", json={}, timeout=60).raise_for_status()
    batches = [documents[i : i + batch] for i in range(0, len(documents), batch)]
    write_ids: list[str] = []
    refused = 0
    lock = threading.Lock()
    started = time.perf_counter()

    def client(part: list[list[dict[str, Any]]]) -> None:
        nonlocal refused
        with httpx.Client(timeout=120) as http:
            for docs in part:
                while True:
                    reply = http.post(
                        f"{url}/v1/collections/{collection}/documents", json={"documents": docs}
                    )
                    if reply.status_code == 429:  # a full journal: come back as told
                        refused += 1
                        time.sleep(float(reply.headers.get("retry-after", "1")))
                        continue
                    reply.raise_for_status()
                    with lock:
                        write_ids.append(reply.json()["write_id"])
                    break

    threads = [threading.Thread(target=client, args=(batches[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    acknowledged = time.perf_counter() - started
    with httpx.Client(timeout=30) as http:
        for write_id in write_ids:
            while (
                http.get(f"{url}/v1/collections/{collection}/writes/{write_id}").json()["status"]
                == "pending"
            ):
                time.sleep(0.2)
    seconds = time.perf_counter() - started
    info = httpx.get(f"{url}/v1/collections/{collection}").json()
    return {
        "documents": len(documents),
        "acknowledged_s": acknowledged,
        "searchable_s": seconds,
        "docs_per_s": len(documents) / seconds,
        "refused_429": refused,
        "generation": info["generation"],
        "chunks": info["chunks"],
    }


def ingest_cli(corpus: Path, index_dir: Path) -> dict[str, Any]:
    run = subprocess.run(
        [SEMSEARCH, "index", str(corpus), "--collection", "cli", "--index-dir", str(index_dir)],
        env=child_env(COLUMNS="200"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    rate = float(re.search(r"rate\s*│\s*([\d.]+) docs/s", run.stdout).group(1))  # type: ignore[union-attr]
    seconds = float(re.search(r"time\s*│\s*([\d.]+) s", run.stdout).group(1))  # type: ignore[union-attr]
    return {"docs_per_s": rate, "seconds": seconds}


def summary(name: str, result: LoadResult) -> dict[str, Any]:
    return {
        "phase": name,
        "searches": result.requests,
        "errors": result.errors,
        "p50_ms": result.percentile(50),
        "p90_ms": result.percentile(90),
        "p99_ms": result.percentile(99),
        "searches_per_s": result.rps,
        "statuses": " ".join(f"{k}:{v}" for k, v in sorted(result.statuses.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--documents", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--idle-seconds", type=float, default=30)
    parser.add_argument(
        "--phases",
        default="load,alone,cli",
        help="load: HTTP ingest under search load; alone: HTTP ingest alone; cli: the CLI",
    )
    args = parser.parse_args()
    phases = set(args.phases.split(","))

    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        lines = args.corpus.read_text().splitlines()[: args.documents]
        documents = []
        for line in lines:
            raw = json.loads(line)
            documents.append(
                {
                    "id": str(raw.get("_id", raw.get("id"))),
                    "text": raw["text"],
                    "title": raw.get("title") or "",
                }
            )
        corpus = root / "batch.jsonl"
        corpus.write_text("\n".join(json.dumps(d) for d in documents) + "\n")

        served = root / "index"
        subprocess.run(
            [SEMSEARCH, "index", str(ROOT / "data" / "corpus.jsonl"), "--index-dir", str(served)],
            env=child_env(),
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        port = free_port()
        env = child_env(
            SEMSEARCH_INDEX_DIR=str(served),
            SEMSEARCH_RERANKER_BACKEND="fake",
            SEMSEARCH_LOG_LEVEL="warning",
        )
        gateway = start_service(
            "gateway", [SEMSEARCH, "serve", "gateway", "--port", str(port)], port, env, root
        )
        try:
            # /ready answers from words before the embedder has loaded; creating a collection
            # with the gateway's embedder needs it
            for _ in range(600):
                ready = httpx.get(f"{gateway.url}/ready").json()["components"]["embedder"]
                if ready["status"] == "ready":
                    break
                time.sleep(0.2)
            search_load(gateway.url, 5, args.concurrency, 10_000_000)  # warm up
            idle = search_load(gateway.url, args.idle_seconds, args.concurrency, 0)
            ingest: dict[str, Any] = {}
            searched: list[LoadResult] = []
            if "load" in phases:

                def run_ingest() -> None:
                    ingest.update(ingest_http(gateway.url, "ingest", documents))

                writer = threading.Thread(target=run_ingest)
                writer.start()
                offset = 100_000
                while writer.is_alive():  # searches for as long as the ingest runs
                    searched.append(search_load(gateway.url, 5, args.concurrency, offset))
                    offset += 20_000
                writer.join()
            # the same documents with no searches: the rate to set against the CLI's, which
            # runs alone too (under search load, the searches take their share of two cores)
            alone = ingest_http(gateway.url, "alone", documents) if "alone" in phases else {}
        finally:
            gateway.stop()
        during = LoadResult(args.concurrency, 0, 0, 0.0, 1)
        for part in searched:
            during.requests += part.requests
            during.errors += part.errors
            during.seconds += part.seconds
            during.latencies_ms += part.latencies_ms
            for status, count in part.statuses.items():
                during.statuses[status] = during.statuses.get(status, 0) + count
        cli = ingest_cli(corpus, root / "cli-index") if "cli" in phases else {}

    rows = [summary("idle", idle)]
    if searched:
        rows.append(summary(f"while {args.documents} docs ingest", during))
    columns = ["phase", "searches", "errors", "statuses", "p50_ms", "p90_ms", "p99_ms"]
    print(table(rows, [*columns, "searches_per_s"]))
    runs = {
        "HTTP under search load (acknowledged -> searchable)": ingest,
        "HTTP alone (acknowledged -> searchable)": alone,
    }
    ingest_rows = [
        {"path": name, "docs_per_s": run["docs_per_s"], "seconds": run["searchable_s"]}
        for name, run in runs.items()
        if run
    ]
    if cli:
        ingest_rows.append(
            {"path": "semsearch index", "docs_per_s": cli["docs_per_s"], "seconds": cli["seconds"]}
        )
    print(table(ingest_rows, ["path", "docs_per_s", "seconds"]))
    ratio = alone["docs_per_s"] / cli["docs_per_s"] if alone and cli else None
    if ratio is not None:
        print(f"HTTP alone / CLI: {ratio:.2f} (target >= 0.8)")
    path = write_json(
        "writes",
        {
            "documents": args.documents,
            "search": rows,
            "ingest_http_under_load": ingest,
            "ingest_http_alone": alone,
            "ingest_cli": cli,
            "http_alone_over_cli": ratio,
            "load_average": os.getloadavg(),
            "machine": {"cpus": len(os.sched_getaffinity(0))},
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
