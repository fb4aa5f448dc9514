"""Search latency and throughput: the gateway vs the tutorial two-stage service vs the bare calls.

    python -m bench.search --index-dir <dir> --collection scifact
    python -m bench.search --dataset ../shared/datasets/scifact   # indexes it first (~10 min)

Three targets on the same collection, each alone on the machine, in one run:
- **bare**: `SentenceTransformer.encode` of one query and a FAISS flat search, in-process, one
  after the other: the floor for a retrieval-only search.
- **tutorial**: `bench/tutorial_search.py`, an async FastAPI endpoint doing encode + FAISS (+
  `CrossEncoder.predict` of the top `depth`): the strongest simple service a user would write.
- **semsearch**: `semsearch serve gateway` on the embedded default (models in-process), dense
  mode, so both services run the same stages.

Workloads: retrieval only (no rerank) at concurrency 1/2/4/8 and reranking the top 20 at
1/4, with SciFact test queries made unique per request (no cache hits).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.models.paths import resolve_model_path
from bench.common import load_store, machine, table, write_json
from harness.loadgen import LoadResult, run_load
from harness.processes import ROOT, Service, child_env, free_port, start_service

EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
RERANKER = ROOT.parent / "shared" / "models" / "semsearch-ce-minilm-l6-scifact"
RERANK_MAX_LENGTH = 256
RERANK_DEPTH = 20
LEVELS = {"retrieval": (1, 2, 4, 8), "rerank": (1, 4)}


def queries(dataset: Path, count: int) -> list[str]:
    texts = [json.loads(line)["text"] for line in (dataset / "queries.jsonl").open()]
    return [f"{texts[i % len(texts)]} ({i})" for i in range(count)]  # unique: no cache hits


def bodies(texts: list[str], workload: str) -> list[dict[str, Any]]:
    rerank = workload == "rerank"
    body: dict[str, Any] = {"top_k": 10, "rerank": rerank, "mode": "dense"}
    if rerank:
        # a deadline every search can rerank within, so both services do the same work (by
        # default semsearch skips reranking that would miss its 2 s deadline, flagged degraded)
        body.update(rerank_depth=RERANK_DEPTH, timeout_ms=60_000)
    return [{"query": t, **body} for t in texts]


def ensure_index(args: argparse.Namespace) -> tuple[Path, str]:
    if args.index_dir:
        return Path(args.index_dir), args.collection
    index_dir = Path(tempfile.mkdtemp(prefix="semsearch-bench-search-"))
    env = child_env(SEMSEARCH_INDEX_DIR=str(index_dir))
    corpus = str(Path(args.dataset) / "corpus.jsonl")
    command = [sys.executable, "-m", "app.cli", "index", corpus, "--collection", args.collection]
    subprocess.run(command, env=env, check=True, cwd=ROOT)
    return index_dir, args.collection


def bare(store: Path, texts: list[str], repeats: int) -> dict[str, float]:
    """encode + FAISS in-process, one query at a time: p50 of each and of both."""
    import faiss
    from sentence_transformers import SentenceTransformer

    _, vectors = load_store(str(store))
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    model = SentenceTransformer(resolve_model_path(EMBEDDER), device="cpu")
    for text in texts[:20]:
        index.search(model.encode([text], normalize_embeddings=True), 10)
    encode_ms, search_ms = [], []
    for text in texts[20 : 20 + repeats]:
        started = time.perf_counter()
        vector = model.encode([text], normalize_embeddings=True)
        encoded = time.perf_counter()
        index.search(vector, 10)
        encode_ms.append((encoded - started) * 1000)
        search_ms.append((time.perf_counter() - encoded) * 1000)
    return {
        "encode_p50_ms": statistics.median(encode_ms),
        "faiss_p50_ms": statistics.median(search_ms),
        "p50_ms": statistics.median(e + s for e, s in zip(encode_ms, search_ms, strict=True)),
        "vectors": float(len(vectors)),
    }


def start(
    target: str, index_dir: Path, collection: str, logs: Path, settings: dict[str, str]
) -> Service:
    port = free_port()
    if target == "tutorial":
        env = child_env(
            BENCH_STORE=str(index_dir / collection / "store.sqlite"),
            BENCH_EMBEDDER=resolve_model_path(EMBEDDER),
            BENCH_RERANKER=str(RERANKER),
            BENCH_RERANKER_MAX_LENGTH=str(RERANK_MAX_LENGTH),
        )
        command = [sys.executable, "-m", "uvicorn", "bench.tutorial_search:app"]
        command += ["--port", str(port), "--log-level", "warning"]
        return start_service("tutorial", command, port, env, logs, ready_path="/docs")
    defaults = dict(
        SEMSEARCH_LOG_LEVEL="warning",
        SEMSEARCH_INDEX_DIR=str(index_dir),
        SEMSEARCH_DEFAULT_COLLECTION=collection,
        SEMSEARCH_RERANKER_MODEL=str(RERANKER),
        SEMSEARCH_RERANKER_MAX_LENGTH=str(RERANK_MAX_LENGTH),
        # reranking's own cap (4 s) would skip what waits behind other searches' reranking:
        # raised so that both services do the same work at concurrency 4
        SEMSEARCH_RERANK_TIMEOUT_MS="60000",
    )
    env = child_env(**{**defaults, **settings})
    command = [sys.executable, "-m", "app.cli", "serve", "gateway", "--port", str(port)]
    service = start_service("semsearch", command, port, env, logs)
    for _ in range(600):  # ready already answers from words while the models load
        components = httpx.get(f"{service.url}/ready").json()["components"]
        if components["embedder"]["status"] == components["reranker"]["status"] == "ready":
            break
        time.sleep(0.2)
    return service


def measure(service: Service, texts: list[str], duration: float) -> list[dict[str, Any]]:
    cells = []
    offset = 0
    for workload, levels in LEVELS.items():
        for level in levels:
            # fresh queries per cell: nothing is answered from the cache
            chunk = texts[offset : offset + 4000]
            offset += 4000
            result: LoadResult = asyncio.run(
                run_load(
                    f"{service.url}/v1/search",
                    bodies(chunk, workload),
                    concurrency=level,
                    duration_s=duration,
                    min_requests=max(20, 4 * level),
                    warmup_requests=5,
                    classify=reranked,
                )
            )
            print(
                f"  {service.name:<10} {workload:<9} c={level:<2} {result.rps:7.1f} req/s  p50 "
                f"{result.percentile(50):7.1f} ms  p99 {result.percentile(99):7.1f} ms  "
                f"errors {result.errors}",
                flush=True,
            )
            cell = {"target": service.name, "workload": workload, **result.summary()}
            # semsearch skips reranking when it would miss the deadline (the answer is then
            # flagged degraded): only reranked answers count as reranking throughput
            reranked_rps = result.labels.get("reranked", 0) / result.seconds
            cell["reranked_rps"] = reranked_rps if workload == "rerank" else None
            cells.append(cell)
    return cells


def reranked(reply: httpx.Response) -> list[str]:
    """The tutorial service always reranks; semsearch says whether it did."""
    if reply.status_code != 200:
        return [str(reply.status_code)]
    return ["reranked"] if reply.json().get("reranked", True) else ["not reranked"]


def judge(cells: list[dict[str, Any]], floor: dict[str, float]) -> list[dict[str, Any]]:
    def cell(target: str, workload: str, level: int) -> dict[str, Any]:
        return next(
            c
            for c in cells
            if (c["target"], c["workload"], c["concurrency"]) == (target, workload, level)
        )

    verdicts = []
    ours = cell("semsearch", "retrieval", 1)["p50_ms"]
    verdicts.append(
        {
            "check": "retrieval c=1 p50 vs bare encode + FAISS",
            "value": f"{ours / floor['p50_ms']:.2f}x ({ours:.1f} vs {floor['p50_ms']:.1f} ms)",
            "target": "<= 1.15x",
            "met": ours <= 1.15 * floor["p50_ms"],
        }
    )
    for workload, levels in LEVELS.items():
        for level in levels:
            mine, theirs = cell("semsearch", workload, level), cell("tutorial", workload, level)
            rate = "reranked_rps" if workload == "rerank" else "rps"
            ratio = mine[rate] / theirs[rate]
            target = 2.0 if workload == "rerank" and level > 1 else 1.0
            verdicts.append(
                {
                    "check": f"{workload} c={level}: req/s vs tutorial",
                    "value": f"{ratio:.2f}x (p50 {mine['p50_ms']:.1f} vs {theirs['p50_ms']:.1f})",
                    "target": f">= {target:g}x",
                    "met": ratio >= target,
                }
            )
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-dir", help="an index dir holding --collection (else index)")
    parser.add_argument("--collection", default="scifact")
    parser.add_argument("--dataset", default=str(ROOT.parent / "shared/datasets/scifact"))
    parser.add_argument("--targets", default="tutorial,semsearch")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per cell")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SEMSEARCH_NAME=VALUE",
        help="a setting of the semsearch gateway (repeatable), to compare one change",
    )
    args = parser.parse_args()
    if malformed := [item for item in args.set if "=" not in item]:
        parser.error(f"--set takes SEMSEARCH_NAME=VALUE, not {malformed[0]!r}")
    settings = dict(item.split("=", 1) for item in args.set)

    index_dir, collection = ensure_index(args)
    texts = queries(Path(args.dataset), 40_000)
    print("bare encode + FAISS in-process", flush=True)
    floor = bare(index_dir / collection / "store.sqlite", texts, 300)
    print(f"  {floor}", flush=True)
    logs = Path(tempfile.mkdtemp(prefix="semsearch-bench-logs-"))
    cells: list[dict[str, Any]] = []
    for target in args.targets.split(","):
        service = start(target, index_dir, collection, logs, settings)
        try:
            cells += measure(service, texts, args.duration)
        finally:
            service.stop()
    verdicts = (
        judge(cells, floor) if {"tutorial", "semsearch"} <= set(args.targets.split(",")) else []
    )
    print()
    columns = ["target", "workload", "concurrency", "requests", "errors", "rps", "reranked_rps"]
    columns += ["p50_ms", "p99_ms"]
    print(table(cells, columns))
    print()
    print(table([{"stage": k, "p50 ms": v} for k, v in floor.items()], ["stage", "p50 ms"]))
    print()
    print(table(verdicts, ["check", "value", "target", "met"]))
    path = write_json(
        "search",
        {
            "machine": machine(),
            "bare": floor,
            "cells": cells,
            "verdicts": verdicts,
            "args": vars(args),
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
