"""FAISS index types: the automatic choice, HNSW and IVF-PQ recall, filtered ANN, GPU setting."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.errors import SemsearchError
from app.evaluation.search import ann_recall
from app.index.faiss.build import build_index
from app.index.faiss.index import FaissIndex
from app.index.faiss.layout import CollectionLayout
from app.types import Document
from tests.conftest import faiss_options

DIM = 32


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, DIM))
    vectors = centers[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, DIM))
    vectors = vectors.astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_auto_picks_by_size() -> None:
    options = faiss_options()
    assert options.resolve_type(10) == "flat"
    assert options.resolve_type(49_999) == "flat"
    assert options.resolve_type(50_000) == "hnsw"
    assert options.resolve_type(3_000_000) == "ivfpq"
    assert faiss_options(index_type="hnsw").resolve_type(10) == "hnsw"


@pytest.mark.parametrize(("kind", "min_recall"), [("hnsw", 0.95), ("ivfpq", 0.7)])
def test_ann_types_recall_against_exact(kind: str, min_recall: float) -> None:
    n = 12_000  # enough to train 256 centroids per PQ sub-quantizer
    vectors = clustered(n)
    queries = clustered(100, seed=1)
    ids = np.arange(100, 100 + n, dtype=np.int64)
    options = faiss_options(
        index_type=kind, ivf_nlist=64, ivf_nprobe=16, pq_m=16, hnsw_ef_search=256
    )
    index, built, params = build_index(vectors, ids, options)
    assert built == kind and params
    _, found = index.search(queries, 10)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10] + 100
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)])
    assert recall >= min_recall, recall


async def test_hnsw_collection_with_selective_and_broad_filters(tmp_path: Path) -> None:
    n = 3000
    vectors = clustered(n)
    docs = [
        Document(f"d{i}", f"t{i}", "", {"group": "rare" if i % 500 == 0 else "common"})
        for i in range(n)
    ]
    options = replace(faiss_options(index_type="hnsw"), exact_filter_limit=100)
    index = await FaissIndex.create(tmp_path, "c", "m", DIM, options=options)
    await index.upsert(docs, vectors)
    await index.publish()
    assert index.index_type == "hnsw"
    manifest = CollectionLayout(tmp_path, "c").read_manifest(1)
    assert manifest.index_params == {"m": 32, "ef_construction": 200}
    query = clustered(1, seed=5)
    rare = (await index.search(query, 10, {"group": "rare"})).hits[0]
    assert sorted(h.id for h in rare) == sorted(f"d{i}" for i in range(0, n, 500))  # all 6, exact
    broad = (await index.search(query, 10, {"group": "common"})).hits[0]  # via the selector
    assert len(broad) == 10 and all(h.metadata["group"] == "common" for h in broad)
    assert await ann_recall(index, query, 10, candidates=10) >= 0.9


async def test_gpu_on_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    index = await FaissIndex.create(tmp_path, "c", "m", DIM, options=faiss_options(faiss_gpu="on"))
    await index.upsert([Document("a", "x")], clustered(1))
    with pytest.raises(SemsearchError, match="no GPU"):
        await index.publish()


async def test_ivfpq_results_are_refined_with_exact_scores(tmp_path: Path) -> None:
    n = 12_000
    vectors = clustered(n)
    docs = [Document(f"d{i}", f"t{i}", "", {"half": i % 2}) for i in range(n)]
    options = replace(
        faiss_options(index_type="ivfpq", ivf_nlist=64, ivf_nprobe=16, pq_m=16),
        exact_filter_limit=10,
    )
    index = await FaissIndex.create(tmp_path, "c", "m", DIM, options=options)
    await index.upsert(docs, vectors)
    await index.publish()
    queries = clustered(50, seed=7)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    result = (await index.search(queries, 10)).hits
    recall = np.mean(
        [
            len({h.id for h in hits} & {f"d{i}" for i in row}) / 10
            for hits, row in zip(result, exact, strict=True)
        ]
    )
    assert recall >= 0.9, recall  # PQ alone ranks approximately; refinement fixes the order
    for hits, query in zip(result, queries, strict=True):  # scores are exact, not PQ estimates
        for hit in hits:
            assert hit.score == pytest.approx(float(vectors[int(hit.id[1:])] @ query), abs=1e-5)
    # what `semsearch eval` reports is what searches get, re-scoring included (PQ codes
    # alone find 0.88 of the exact top 10 here)
    assert await ann_recall(index, queries, 10, candidates=10) == pytest.approx(recall)
    filtered = (await index.search(queries[:5], 10, {"half": 1})).hits
    assert all(len(h) == 10 and all(x.metadata["half"] == 1 for x in h) for h in filtered)


async def test_ivfpq_on_too_few_vectors_builds_what_they_can_train(tmp_path: Path) -> None:
    options = faiss_options(index_type="ivfpq", ivf_nlist=512, pq_m=16)
    index = await FaissIndex.create(tmp_path, "c", "m", DIM, options=options)
    tiny = clustered(4)
    await index.upsert([Document(f"d{i}", f"t{i}") for i in range(4)], tiny)
    assert await index.publish() == 1  # PQ cannot train on 4 vectors: exact (flat) instead
    assert index.index_type == "flat"
    assert [h[0].id for h in (await index.search(tiny, 1)).hits] == ["d0", "d1", "d2", "d3"]
    more = clustered(1000, seed=3)
    await index.upsert([Document(f"e{i}", f"t{i}") for i in range(1000)], more)
    assert await index.publish() == 2  # 512 lists cannot train on 1,004 vectors: fewer
    assert index.index_type == "ivfpq"
    manifest = CollectionLayout(tmp_path, "c").read_manifest(2)
    assert manifest.index_params == {"nlist": 1004 // 39, "pq_m": 16}
