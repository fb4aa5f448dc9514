"""What hybrid search costs: the lexical stage, and hybrid's added latency over dense.

    python -m bench.hybrid                      # SciFact size and 1M chunks (~20 min)
    python -m bench.hybrid --sizes scifact      # SciFact size only (~1 min)

Each size is a FAISS collection published by the real indexing path (store, FAISS index,
tantivy lexical index), searched in-process through the real SearchPipeline with the fake
embedder (64-d bag-of-words vectors: no model, so the numbers are the retrieval layers' own),
rerank and cache off. Queries are SciFact's test claims. Per query and mode (dense, hybrid,
lexical) in the same run: the pipeline's total and its per-stage timings. Dense is HNSW at
1M chunks (auto index type), exact below 50k.

- scifact: the 5,183 SciFact abstracts.
- 1m: a million chunks of three sentences drawn at random from SciFact (the vocabulary and
  term statistics of real text, at scale).

Also reported: the publish time with and without the lexical index, and the index sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import machine, table, write_json

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "scifact"
MODES = ("dense", "hybrid", "lexical")


def scifact_documents() -> Iterator[Any]:
    from app.evaluation.beir import load_beir

    yield from load_beir(DATASET).corpus


def sampled_documents(count: int, seed: int = 0) -> Iterator[Any]:
    from app.evaluation.beir import load_beir
    from app.types import Document

    sentences = [
        s
        for doc in load_beir(DATASET).corpus
        for s in re.split(r"(?<=[.!?])\s+", doc.text)
        if len(s.split()) >= 4
    ]
    rng = random.Random(seed)
    for i in range(count):
        yield Document(f"c{i}", " ".join(rng.choices(sentences, k=3)), "", {"bucket": i % 10})


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


async def build(name: str, documents: Iterator[Any], root: Path, lexical: bool) -> dict[str, Any]:
    """Index `documents` as `semsearch index` would (the fake embedder) and time the publish."""
    from app.config import GatewaySettings
    from app.index.faiss.build import FaissOptions
    from app.index.faiss.index import FaissIndex
    from app.ingest.indexer import index_documents
    from app.models.fake import FakeEmbedder

    embedder = FakeEmbedder(model_id="fake", dimension=64)
    options = FaissOptions.from_settings(GatewaySettings(lexical_index=lexical))
    index = await FaissIndex.create(root, name, "fake", 64, options)
    started = time.perf_counter()
    await index_documents(list(documents), index, embedder, batch_size=4096)
    seconds = time.perf_counter() - started
    generation = root / name / "generations" / f"gen-{index.generation:06d}"
    manifest = json.loads((generation / "manifest.json").read_text())
    await index.close()
    embedder.calls.clear()
    return {
        "index_seconds": round(seconds, 1),
        "publish_seconds": manifest["build_seconds"],
        "documents": manifest["count"],
        "index_type": manifest["index_type"],
        "lexical_mb": round(folder_mb(generation / "lexical"), 1) if lexical else 0.0,
        "generation_mb": round(folder_mb(generation), 1),
    }


async def latencies(name: str, root: Path, queries: list[str]) -> dict[str, dict[str, float]]:
    from app.config import GatewaySettings
    from app.index.collections import Collections
    from app.models.fake import FakeEmbedder, FakeReranker
    from app.search.cache import LRUCache, SafeCache
    from app.search.config import Guards, PipelineConfig
    from app.search.pipeline import SearchPipeline
    from app.types import SearchMode, SearchQuery

    settings = GatewaySettings(index_dir=root, default_collection=name)
    pipeline = SearchPipeline(
        embedder=FakeEmbedder(model_id="fake", dimension=64),
        reranker=FakeReranker(),
        collections=Collections.from_settings(settings),
        cache=SafeCache(LRUCache(1), 1.0),
        config=PipelineConfig.from_settings(settings),
        guards=Guards.from_settings(settings),
        default_collection=name,
    )
    await pipeline.start()
    await pipeline.wait_ready()
    stages: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}
    try:
        for round_ in range(2):  # the first round warms caches and pages; the second counts
            for i, text in enumerate(queries):
                for mode in MODES:
                    result = await pipeline.search(
                        SearchQuery(
                            query=f"{text} {round_}",  # never a cached answer
                            collection=name,
                            top_k=10,
                            candidates=100,
                            rerank=False,
                            mode=SearchMode(mode),
                        )
                    )
                    if round_ == 1:
                        for stage, ms in result.timings_ms.items():
                            stages[mode].setdefault(stage, []).append(ms)
                    if i % 100 == 0 and round_ == 1 and mode == "hybrid":
                        print(f"  {name}: {i}/{len(queries)} queries", flush=True)
    finally:
        await pipeline.stop()
    return {
        mode: {
            f"{stage}_p{p}": round(percentile(values, p), 3)
            for stage, values in by_stage.items()
            for p in (50, 99)
        }
        for mode, by_stage in stages.items()
    }


async def run(size: str, work: Path, queries: list[str]) -> dict[str, Any]:
    def documents() -> Iterator[Any]:
        return scifact_documents() if size == "scifact" else sampled_documents(1_000_000)

    print(f"{size}: indexing without, then with the lexical index", flush=True)
    without = await build(size, documents(), work / "dense-only", lexical=False)
    shutil.rmtree(work / "dense-only")
    built = await build(size, documents(), work / "hybrid", lexical=True)
    print(f"{size}: searching", flush=True)
    timed = await latencies(size, work / "hybrid", queries)
    shutil.rmtree(work / "hybrid")
    dense, hybrid, lexical = (timed[m] for m in MODES)
    return {
        "size": size,
        "documents": built["documents"],
        "dense_index": built["index_type"],
        "lexical_p50_ms": hybrid["lexical_p50"],
        "lexical_p99_ms": hybrid["lexical_p99"],
        "dense_total_p50_ms": dense["total_p50"],
        "hybrid_total_p50_ms": hybrid["total_p50"],
        "hybrid_added_p50_ms": round(hybrid["total_p50"] - dense["total_p50"], 3),
        "dense_total_p99_ms": dense["total_p99"],
        "hybrid_total_p99_ms": hybrid["total_p99"],
        "hybrid_added_p99_ms": round(hybrid["total_p99"] - dense["total_p99"], 3),
        "lexical_only_total_p50_ms": lexical["total_p50"],
        "publish_s_dense_only": without["publish_seconds"],
        "publish_s_with_lexical": built["publish_seconds"],
        "index_s_dense_only": without["index_seconds"],
        "index_s_with_lexical": built["index_seconds"],
        "lexical_index_mb": built["lexical_mb"],
        "generation_mb": built["generation_mb"],
        "stages": timed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="scifact,1m")
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    from app.evaluation.beir import load_beir

    queries = list(load_beir(DATASET, "test").queries.values())[: args.queries]
    rows = []
    with tempfile.TemporaryDirectory(prefix="semsearch-bench-hybrid-") as work:
        for size in args.sizes.split(","):
            rows.append(asyncio.run(run(size, Path(work), queries)))
    columns = [
        "size",
        "documents",
        "dense_index",
        "lexical_p50_ms",
        "lexical_p99_ms",
        "dense_total_p50_ms",
        "hybrid_total_p50_ms",
        "hybrid_added_p50_ms",
        "hybrid_added_p99_ms",
        "publish_s_dense_only",
        "publish_s_with_lexical",
        "lexical_index_mb",
    ]
    print(table(rows, columns))
    print(f"p50/p99 over {len(queries)} queries per mode (a second round; the first warms up)")
    path = write_json("hybrid", {"rows": rows, "queries": len(queries), "machine": machine()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
