"""Search quality through the HTTP API: a gateway process, the real models, the judged queries
sent as a client sends them.

    python -m bench.api_quality DATASET_DIR --index-dir DIR --collection NAME [--rerank-model M]

The collection must be indexed already (`semsearch index` / `semsearch eval` write it). Each
variant (mode, group_by, rerank) sends every judged query of the split to `POST /v1/search`
(top_k 100, or 10 documents for the grouping comparison) and scores the answers with ir-measures;
an answer's documents are ranked in the order it gives them (a chunk counts for its document,
at its first place). It also checks that no document-grouped answer lists a document twice.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx

from app.evaluation.beir import evaluate, load_beir
from bench.common import machine, table, write_json
from harness.processes import child_env, free_port, start_service

VARIANTS: list[dict[str, Any]] = [
    {"name": "lexical", "mode": "lexical", "rerank": False},
    {"name": "dense", "mode": "dense", "rerank": False},
    {"name": "hybrid", "mode": "hybrid", "rerank": False},
    {"name": "hybrid + rerank", "mode": "hybrid", "rerank": True},
    {"name": "chunks (top 10)", "mode": "hybrid", "rerank": False, "group_by": "chunk", "k": 10},
    {
        "name": "documents (top 10)",
        "mode": "hybrid",
        "rerank": False,
        "group_by": "document",
        "k": 10,
    },
]


async def run_variant(
    url: str, queries: dict[str, str], variant: dict[str, Any], collection: str
) -> tuple[dict[str, dict[str, float]], int]:
    """The run (query -> document -> score) and how many answers listed a document twice."""
    semaphore = asyncio.Semaphore(2 if variant["rerank"] else 4)
    run: dict[str, dict[str, float]] = {}
    repeated = 0
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(query_id: str, text: str) -> None:
            nonlocal repeated
            body = {
                "query": text,
                "collection": collection,
                "mode": variant["mode"],
                "rerank": variant["rerank"],
                "top_k": variant.get("k", 100),
                "candidates": 100,
                "group_by": variant.get("group_by", "document"),
                "timeout_ms": 60_000,
            }
            async with semaphore:
                reply = await client.post("/v1/search", json=body)
            reply.raise_for_status()
            documents = [hit["document_id"] for hit in reply.json()["results"]]
            if body["group_by"] == "document" and len(documents) != len(set(documents)):
                repeated += 1
            scored: dict[str, float] = {}
            for position, document in enumerate(documents):
                scored.setdefault(document, float(len(documents) - position))
            run[query_id] = scored

        await asyncio.gather(*(one(q, t) for q, t in queries.items()))
    return run, repeated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--rerank-model", default="")
    parser.add_argument("--variants", default=",".join(v["name"] for v in VARIANTS))
    args = parser.parse_args()
    dataset = load_beir(args.dataset, args.split)
    port = free_port()
    # the collection is the default one: /ready waits for the default collection to open
    settings = {
        "SEMSEARCH_INDEX_DIR": str(args.index_dir.resolve()),
        "SEMSEARCH_DEFAULT_COLLECTION": args.collection,
    }
    if args.rerank_model:
        settings |= {
            "SEMSEARCH_RERANKER_MODEL": args.rerank_model,
            "SEMSEARCH_RERANKER_MAX_LENGTH": "256",
        }
    logs = Path("bench/results")
    logs.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).with_name("semsearch")),
        "serve",
        "gateway",
        "--port",
        str(port),
    ]
    gateway = start_service("gateway", command, port, child_env(**settings), logs)
    rows = []
    try:
        wanted = set(args.variants.split(","))
        for variant in (v for v in VARIANTS if v["name"] in wanted):
            run, repeated = asyncio.run(
                run_variant(gateway.url, dataset.queries, variant, args.collection)
            )
            scores = evaluate(run, dataset.qrels)
            rows.append({"variant": variant["name"], **scores, "answers_with_a_repeat": repeated})
            print(f"{variant['name']}: nDCG@10 {scores['nDCG@10']:.4f}", flush=True)
    finally:
        gateway.stop()
    print(table(rows, ["variant", "nDCG@10", "R@10", "R@100", "RR@10", "answers_with_a_repeat"]))
    path = write_json(
        f"api-quality-{dataset.name}-{args.split}",
        {"dataset": dataset.name, "split": args.split, "rows": rows, "machine": machine()},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
