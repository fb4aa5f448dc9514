"""Search latency and throughput: the gateway vs the tutorial two-stage service vs the bare calls.

    python -m bench.search --index-dir <dir> --collection scifact
    python -m bench.search --dataset ../shared/datasets/scifact   # indexes it first (~10 min)

Three targets on the same collection, in one run, taking turns: both services run from the
start, and each cell (a workload at one concurrency) is measured on one, then the other, for
`--rounds` rounds (the order flips each round, as does the bare calls' place), so that a
change in the shared host's speed falls on both alike (it moves 2-4x within minutes here).
A cell's numbers pool its rounds; the verdicts list each round's ratio too.
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


class Bare:
    """encode + FAISS in-process, one query at a time (the floor), models loaded once."""

    def __init__(self, store: Path) -> None:
        import faiss
        from sentence_transformers import SentenceTransformer

        _, vectors = load_store(str(store))
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)
        self.model = SentenceTransformer(resolve_model_path(EMBEDDER), device="cpu")

    def measure(self, texts: list[str]) -> dict[str, float]:
        """p50 of each call and of both, over `texts` (the first 20 warm up)."""
        for text in texts[:20]:
            self.index.search(self.model.encode([text], normalize_embeddings=True), 10)
        encode_ms, search_ms = [], []
        for text in texts[20:]:
            started = time.perf_counter()
            vector = self.model.encode([text], normalize_embeddings=True)
            encoded = time.perf_counter()
            self.index.search(vector, 10)
            encode_ms.append((encoded - started) * 1000)
            search_ms.append((time.perf_counter() - encoded) * 1000)
        both = [e + s for e, s in zip(encode_ms, search_ms, strict=True)]
        return {
            "encode_p50_ms": statistics.median(encode_ms),
            "faiss_p50_ms": statistics.median(search_ms),
            "p50_ms": statistics.median(both),
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
    for _ in range(1500):  # ready already answers from words while the models load
        components = httpx.get(f"{service.url}/ready").json()["components"]
        models = (components["embedder"], components["reranker"])
        # and the first start on a machine exports the models for ONNX Runtime (~15 s of CPU
        # each), while torch serves: measured once that is done
        if all(m["status"] == "ready" and "pending" not in m["backend"] for m in models):
            break
        time.sleep(0.2)
    return service


def measure(
    service: Service, workload: str, level: int, texts: list[str], duration: float
) -> LoadResult:
    result: LoadResult = asyncio.run(
        run_load(
            f"{service.url}/v1/search",
            bodies(texts, workload),
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
    return result


def cell(target: str, workload: str, result: LoadResult) -> dict[str, Any]:
    summary = {"target": target, "workload": workload, **result.summary()}
    # semsearch skips reranking when it would miss the deadline (the answer is then flagged
    # degraded): only reranked answers count as reranking throughput
    reranked_rps = result.labels.get("reranked", 0) / result.seconds
    summary["reranked_rps"] = reranked_rps if workload == "rerank" else None
    return summary


def reranked(reply: httpx.Response) -> list[str]:
    """The tutorial service always reranks; semsearch says whether it did."""
    if reply.status_code != 200:
        return [str(reply.status_code)]
    return ["reranked"] if reply.json().get("reranked", True) else ["not reranked"]


def find(cells: list[dict[str, Any]], target: str, workload: str, level: int) -> dict[str, Any]:
    return next(
        c
        for c in cells
        if (c["target"], c["workload"], c["concurrency"]) == (target, workload, level)
    )


def judge(
    pooled: list[dict[str, Any]], rounds: list[list[dict[str, Any]]], floors: list[dict[str, float]]
) -> list[dict[str, Any]]:
    """Each target of issue 15 from the pooled cells, with each round's own ratio beside it."""

    def floor_ratio(cells: list[dict[str, Any]], floor: dict[str, float]) -> float:
        return float(find(cells, "semsearch", "retrieval", 1)["p50_ms"] / floor["p50_ms"])

    floor_p50 = statistics.mean(f["p50_ms"] for f in floors)
    ours = find(pooled, "semsearch", "retrieval", 1)["p50_ms"]
    verdicts = [
        {
            "check": "retrieval c=1 p50 vs bare encode + FAISS",
            "value": f"{ours / floor_p50:.2f}x ({ours:.1f} vs {floor_p50:.1f} ms)",
            "rounds": " / ".join(
                f"{floor_ratio(r, f):.2f}x" for r, f in zip(rounds, floors, strict=True)
            ),
            "target": "<= 1.15x",
            "met": ours <= 1.15 * floor_p50,
        }
    ]

    def ratio(cells: list[dict[str, Any]], workload: str, level: int) -> float:
        rate = "reranked_rps" if workload == "rerank" else "rps"
        mine, theirs = (find(cells, t, workload, level) for t in ("semsearch", "tutorial"))
        return float(mine[rate] / theirs[rate])

    for workload, levels in LEVELS.items():
        for level in levels:
            mine, theirs = (find(pooled, t, workload, level) for t in ("semsearch", "tutorial"))
            target = 2.0 if workload == "rerank" and level > 1 else 1.0
            verdicts.append(
                {
                    "check": f"{workload} c={level}: req/s vs tutorial",
                    "value": f"{ratio(pooled, workload, level):.2f}x (p50 {mine['p50_ms']:.1f} "
                    f"vs {theirs['p50_ms']:.1f})",
                    "rounds": " / ".join(f"{ratio(r, workload, level):.2f}x" for r in rounds),
                    "target": f">= {target:g}x",
                    "met": ratio(pooled, workload, level) >= target,
                }
            )
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-dir", help="an index dir holding --collection (else index)")
    parser.add_argument("--collection", default="scifact")
    parser.add_argument("--dataset", default=str(ROOT.parent / "shared/datasets/scifact"))
    parser.add_argument("--targets", default="tutorial,semsearch")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=2, help="turns each target takes per cell")
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
    targets = args.targets.split(",")
    plan = [(workload, level) for workload, levels in LEVELS.items() for level in levels]
    # fresh queries for every cell, target and round: nothing is answered from the cache
    chunks = iter(range(0, 10**9, 2000))
    texts = queries(Path(args.dataset), 2000 * (len(plan) * len(targets) + 1) * args.rounds)
    bare = Bare(index_dir / collection / "store.sqlite")
    logs = Path(tempfile.mkdtemp(prefix="semsearch-bench-logs-"))
    services: list[Service] = []
    floors: list[dict[str, float]] = []
    results: dict[tuple[str, str, int], list[LoadResult]] = {}
    try:
        for target in targets:
            services.append(start(target, index_dir, collection, logs, settings))
        for round_ in range(args.rounds):
            order = services if round_ % 2 == 0 else services[::-1]
            if round_ % 2 == 0:
                floors.append(floor_of(bare, texts, next(chunks), round_))
            for workload, level in plan:
                for service in order:
                    start_at = next(chunks)
                    chunk = texts[start_at : start_at + 2000]
                    result = measure(service, workload, level, chunk, args.duration)
                    results.setdefault((service.name, workload, level), []).append(result)
            if round_ % 2 == 1:
                floors.append(floor_of(bare, texts, next(chunks), round_))
    finally:
        for service in services:
            service.stop()
    pooled = [
        cell(target, workload, LoadResult.pooled(runs))
        for (target, workload, _), runs in results.items()
    ]
    rounds = [
        [cell(target, workload, runs[r]) for (target, workload, _), runs in results.items()]
        for r in range(args.rounds)
    ]
    verdicts = judge(pooled, rounds, floors) if {"tutorial", "semsearch"} <= set(targets) else []
    print()
    columns = ["target", "workload", "concurrency", "requests", "errors", "rps", "reranked_rps"]
    columns += ["p50_ms", "p99_ms"]
    print(table(pooled, columns))
    print()
    print(table(floors, ["encode_p50_ms", "faiss_p50_ms", "p50_ms"]))
    print()
    print(table(verdicts, ["check", "value", "rounds", "target", "met"]))
    path = write_json(
        "search",
        {
            "machine": machine(),
            "bare": floors,
            "cells": pooled,
            "rounds": rounds,
            "verdicts": verdicts,
            "args": vars(args),
        },
    )
    print(f"\nwrote {path}")


def floor_of(bare: Bare, texts: list[str], start_at: int, round_: int) -> dict[str, float]:
    print(f"bare encode + FAISS in-process (round {round_ + 1})", flush=True)
    floor = bare.measure(texts[start_at : start_at + 320])
    print(f"  {floor}", flush=True)
    return floor


if __name__ == "__main__":
    main()
