"""Reranker quality by precision/backend on a BEIR dataset: rerank the dense top-k.

    python -m bench.rerank_quality ../shared/datasets/scifact \
        --reranker ../shared/models/semsearch-ce-minilm-l6-scifact [--depth 30]

The dense candidates (all-MiniLM-L6-v2, float32) are computed once and cached under
bench/.cache; each variant then scores the same (query, passage) pairs through the real
in-process path (tokenizer, BatchQueue, engine) and is evaluated with nDCG@10.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.config import EmbedderSettings, RerankerSettings
from app.evaluation.beir import evaluate, load_beir
from app.models import build_embedder, build_reranker
from app.types import InputType, Truncate
from bench.common import machine, table, write_json

CACHE = Path(__file__).resolve().parent / ".cache"
VARIANTS: dict[str, dict[str, Any]] = {
    "torch-float32": {"backend": "sentence-transformers", "dtype": "float32"},
    "torch-bfloat16": {"backend": "sentence-transformers", "dtype": "bfloat16"},
    "onnx-float32": {"backend": "onnx"},
    "onnx-int8": {"backend": "onnx-int8"},
}


async def dense_candidates(
    dataset_dir: Path, depth: int
) -> tuple[Any, dict[str, list[int]], dict[str, float]]:
    dataset = load_beir(dataset_dir)
    cache = CACHE / f"{dataset.name}-minilm-f32.npz"
    query_ids = list(dataset.queries)
    if cache.exists():
        stored = np.load(cache)
        docs, queries = stored["docs"], stored["queries"]
    else:
        embedder = build_embedder(EmbedderSettings(dtype="float32"))
        await embedder.start()
        passages = [d.passage for d in dataset.corpus]
        docs = np.concatenate(
            [
                (
                    await embedder.embed(passages[i : i + 256], InputType.PASSAGE, Truncate.END)
                ).vectors
                for i in range(0, len(passages), 256)
            ]
        )
        queries = (
            await embedder.embed(
                [dataset.queries[q] for q in query_ids], InputType.QUERY, Truncate.END
            )
        ).vectors
        await embedder.stop()
        CACHE.mkdir(exist_ok=True)
        np.savez(cache, docs=docs, queries=queries)
    scores = queries @ docs.T
    top = np.argsort(-scores, axis=1)[:, :depth]
    candidates = {q: [int(j) for j in top[i]] for i, q in enumerate(query_ids)}
    dense_run = {
        q: {dataset.corpus[j].id: float(scores[i, j]) for j in top[i]}
        for i, q in enumerate(query_ids)
    }
    return dataset, candidates, evaluate(dense_run, dataset.qrels)


async def run_variant(
    name: str, reranker_dir: str, dataset: Any, candidates: dict[str, list[int]]
) -> dict[str, Any]:
    reranker = build_reranker(
        RerankerSettings(model=reranker_dir, max_length=256, **VARIANTS[name])
    )
    await reranker.start()
    if not reranker.ready:
        raise SystemExit(f"{name}: {reranker.status}")
    run: dict[str, dict[str, float]] = {}
    pairs = 0
    started = time.perf_counter()
    for q, docs in candidates.items():
        passages = [dataset.corpus[j].passage for j in docs]
        scores = await reranker.score(dataset.queries[q], passages, Truncate.END)
        run[q] = {dataset.corpus[j].id: s for j, s in zip(docs, scores, strict=True)}
        pairs += len(passages)
    seconds = time.perf_counter() - started
    await reranker.stop()
    return {
        "variant": name,
        **evaluate(run, dataset.qrels),
        "pairs_per_s": pairs / seconds,
        "backend": reranker.info.backend,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--reranker", required=True)
    parser.add_argument("--depth", type=int, default=30)
    parser.add_argument("--variants", default="torch-float32,torch-bfloat16")
    args = parser.parse_args()
    dataset, candidates, dense = asyncio.run(dense_candidates(args.dataset, args.depth))
    print(f"dense top-{args.depth}: nDCG@10 {dense['nDCG@10']:.4f}", flush=True)
    rows = [{"variant": "dense only", **dense}]
    for name in args.variants.split(","):
        row = asyncio.run(run_variant(name, args.reranker, dataset, candidates))
        print(
            f"{name}: nDCG@10 {row['nDCG@10']:.4f} at {row['pairs_per_s']:.1f} pairs/s", flush=True
        )
        rows.append(row)
    print(table(rows, ["variant", "nDCG@10", "R@10", "RR@10", "pairs_per_s"]))
    path = write_json(
        "rerank_quality",
        {
            "dataset": str(args.dataset),
            "reranker": args.reranker,
            "depth": args.depth,
            "machine": machine(),
            "rows": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
