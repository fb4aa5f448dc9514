"""ANN quality and speed at scale: HNSW (and IVF-PQ) vs exact search on clustered vectors.

    python -m bench.ann --n 1000000 --dim 384

Vectors are drawn around random cluster centres (like real embeddings: dense neighbourhoods,
not uniform noise) and normalized; queries come from the same distribution. The index is
built by the code `semsearch index` uses (`app.index.faiss.build.build_index`). Reports build
time, recall@10 against exact (brute-force) search for several efSearch (HNSW) or nprobe
(IVF-PQ) values, and single-query latency p50/p99. IVF-PQ is measured as it is served: PQ
candidates re-scored exactly from the raw vectors (`ivf_refine` per result), and without
that step for comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import faiss
import numpy as np

from app.config import GatewaySettings
from app.index.faiss.build import FaissOptions, build_index, refine, set_search_params
from bench.common import machine, table, write_json


def clustered(n: int, dim: int, clusters: int, seed: int, chunk: int = 200_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = centres[rng.integers(0, clusters, stop - start)]
        block += 0.6 * rng.standard_normal((stop - start, dim)).astype(np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


class Searcher:
    """Top-k the way the gateway's FAISS backend does it (IVF-PQ: fetch more, re-score)."""

    def __init__(self, index: Any, kind: str, vectors: np.ndarray, refine_factor: int) -> None:
        self.index, self.vectors = index, vectors
        self.refine_factor = refine_factor if kind == "ivfpq" else 0
        self.seqs = np.arange(len(vectors), dtype=np.int64)

    def __call__(self, queries: np.ndarray, k: int) -> np.ndarray:
        ids: np.ndarray = self.index.search(queries, k * max(1, self.refine_factor))[1]
        if not self.refine_factor:
            return ids
        return refine(self.vectors, self.seqs, queries, ids, k)[1]


def latency_ms(search: Any, queries: np.ndarray, k: int) -> tuple[float, float]:
    times = []
    for query in queries:
        started = time.perf_counter()
        search(query[None, :], k)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact, strict=True)])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--types", default="hnsw")
    parser.add_argument("--ef", default="64,128,256")
    args = parser.parse_args()

    started = time.perf_counter()
    vectors = clustered(args.n, args.dim, args.clusters, seed=1)
    queries = clustered(args.queries, args.dim, args.clusters, seed=2)
    print(f"generated {args.n} x {args.dim} in {time.perf_counter() - started:.0f}s", flush=True)
    exact_index = faiss.IndexFlatIP(args.dim)
    exact_index.add(vectors)
    started = time.perf_counter()
    _, exact = exact_index.search(queries, 10)
    exact_seconds = time.perf_counter() - started
    flat_p50, flat_p99 = latency_ms(exact_index.search, queries[:200], 10)
    del exact_index
    rows: list[dict[str, Any]] = [
        {
            "index": "flat (exact)",
            "build_s": 0.0,
            "recall@10": 1.0,
            "p50_ms": flat_p50,
            "p99_ms": flat_p99,
        }
    ]
    print(f"exact ground truth in {exact_seconds:.1f}s; flat p50 {flat_p50:.1f} ms", flush=True)
    ids = np.arange(args.n, dtype=np.int64)
    for kind in args.types.split(","):
        options = FaissOptions.from_settings(GatewaySettings(index_type=kind))
        started = time.perf_counter()
        index, built, params = build_index(vectors, ids, options)
        build_s = time.perf_counter() - started
        print(f"built {built} {params} in {build_s:.0f}s", flush=True)
        for ef in (int(e) for e in args.ef.split(",")):
            tuned = dataclasses.replace(options, hnsw_ef_search=ef, ivf_nprobe=ef)
            set_search_params(index, built, tuned)
            knob = "efSearch" if kind == "hnsw" else "nprobe"
            variants = [("", tuned.ivf_refine)] + ([(" no refine", 0)] if kind == "ivfpq" else [])
            for label, factor in variants:
                search = Searcher(index, built, vectors, factor)
                found = search(queries, 10)
                p50, p99 = latency_ms(search, queries, 10)
                row = {
                    "index": f"{built} {knob}={ef}{label}",
                    "build_s": build_s,
                    "recall@10": recall(found, exact),
                    "p50_ms": p50,
                    "p99_ms": p99,
                    **params,
                    **({"refine": factor} if kind == "ivfpq" else {}),
                }
                rows.append(row)
                print(
                    f"  {row['index']}: recall@10 {row['recall@10']:.4f}, p50 {p50:.2f} ms, "
                    f"p99 {p99:.2f} ms",
                    flush=True,
                )
        del index
    print(table(rows, ["index", "build_s", "recall@10", "p50_ms", "p99_ms"]))
    path = write_json(
        f"ann-{args.n}-{args.types.replace(',', '-')}",
        {
            "n": args.n,
            "dim": args.dim,
            "clusters": args.clusters,
            "queries": args.queries,
            "machine": machine(),
            "rows": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
