"""Building a FAISS index: the type chosen by size or by setting, its build and search
parameters, IVF-PQ's exact re-scoring, and the move to a GPU when there is one."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np

from app.config import GatewaySettings
from app.errors import SemsearchError
from app.extras import MissingExtra
from app.logs import get_logger
from app.types import FloatArray

log = get_logger(__name__)

IndexType = Literal["flat", "hnsw", "ivfpq"]
FLAT_BELOW = 50_000  # auto: exact search is fast enough below this many vectors
HNSW_BELOW = 2_000_000  # auto: HNSW up to here, IVF-PQ (compressed) above
_ADD_BATCH = 65_536
PQ_MIN_VECTORS = 256  # PQ trains 256 centroids per sub-quantizer: fewer vectors cannot
IVF_POINTS_PER_LIST = 39  # FAISS's k-means wants this many training vectors per centroid


@dataclass(frozen=True)
class FaissOptions:
    """Build parameters (used at publish) and search parameters (used when loading)."""

    index_type: Literal["auto", "flat", "hnsw", "ivfpq"]
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef_search: int
    ivf_nlist: int  # 0: 4 * sqrt(n)
    ivf_nprobe: int
    pq_m: int  # 0: dimension / 8 subquantizers (8 dimensions per code byte)
    ivf_refine: int  # IVF-PQ: candidates fetched per result, re-scored exactly
    gpu: Literal["auto", "on", "off"]
    lexical: bool  # build a lexical (tantivy) index with each generation
    exact_filter_limit: int = 50_000  # filtered searches over fewer matches are exact

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> FaissOptions:
        return cls(
            index_type=settings.index_type,
            hnsw_m=settings.hnsw_m,
            hnsw_ef_construction=settings.hnsw_ef_construction,
            hnsw_ef_search=settings.hnsw_ef_search,
            ivf_nlist=settings.ivf_nlist,
            ivf_nprobe=settings.ivf_nprobe,
            pq_m=settings.pq_m,
            ivf_refine=settings.ivf_refine,
            gpu=settings.faiss_gpu,
            lexical=settings.lexical_index,
        )

    def resolve_type(self, count: int) -> IndexType:
        if self.index_type != "auto":
            return self.index_type
        return "flat" if count < FLAT_BELOW else "hnsw" if count < HNSW_BELOW else "ivfpq"


def build_index(
    vectors: np.ndarray, ids: np.ndarray, options: FaissOptions
) -> tuple[faiss.Index, IndexType, dict[str, int]]:
    """A FAISS index over `vectors` (rows, unit length) with FAISS ids `ids`."""
    count, dim = vectors.shape
    kind = options.resolve_type(count)
    if kind == "ivfpq" and count < PQ_MIN_VECTORS:
        log.warning("ivfpq_needs_more_vectors", vectors=count, needed=PQ_MIN_VECTORS, built="flat")
        kind = "flat"  # exact, and fast at this size
    params: dict[str, int] = {}
    base: faiss.Index
    if kind == "flat":
        base = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = options.hnsw_ef_construction
        params = {"m": options.hnsw_m, "ef_construction": options.hnsw_ef_construction}
    else:
        trainable = max(1, count // IVF_POINTS_PER_LIST)  # lists the vectors can train
        nlist = min(max(16, int(4 * math.sqrt(count))), 65_536, trainable)
        if options.ivf_nlist:
            nlist = min(options.ivf_nlist, trainable)
            if nlist < options.ivf_nlist:
                log.warning("ivf_nlist_reduced", vectors=count, nlist=options.ivf_nlist, used=nlist)
        pq_m = options.pq_m or _largest_divisor(dim, max(1, dim // 8))
        if dim % pq_m:
            raise SemsearchError(f"pq_m={pq_m} must divide the dimension {dim}")
        base = faiss.IndexIVFPQ(
            faiss.IndexFlatIP(dim), dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT
        )
        sample = np.random.default_rng(0).choice(
            count, size=min(count, 256 * nlist, 200_000), replace=False
        )
        base.train(np.ascontiguousarray(vectors[np.sort(sample)]))
        params = {"nlist": nlist, "pq_m": pq_m}
    index = faiss.IndexIDMap2(base)
    for start in range(0, count, _ADD_BATCH):
        stop = start + _ADD_BATCH
        index.add_with_ids(np.ascontiguousarray(vectors[start:stop]), ids[start:stop])
    set_search_params(index, kind, options)
    return index, kind, params


def refine(
    raw: np.ndarray, seqs: np.ndarray, queries: FloatArray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores for the candidates PQ found, from the raw vectors (`raw[i]` is the vector
    of FAISS id `seqs[i]`, `seqs` sorted); keep the best k. PQ codes alone rank neighbours
    inside a dense cluster poorly (recall@10 0.23 on 1M clustered vectors in bench/ann.py);
    re-scoring 30x candidates from the memory-mapped raw vectors gives 0.98 for under 1 ms more
    (10x: 0.78; see bench/README.md)."""
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (query, candidates) in enumerate(zip(queries, ids, strict=True)):
        found = candidates[candidates >= 0]
        if not len(found):
            continue
        exact = np.asarray(raw[np.searchsorted(seqs, found)]) @ query
        best = np.argsort(-exact, kind="stable")[:k]
        out_scores[row, : len(best)] = exact[best]
        out_ids[row, : len(best)] = found[best]
    return out_scores, out_ids


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, at_most + 1) if n % d == 0)


def set_search_params(index: faiss.Index, kind: str, options: FaissOptions) -> None:
    """efSearch (HNSW) and nprobe (IVF): search-time knobs, changeable without a rebuild."""
    inner: Any = (
        faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    )
    if kind == "hnsw":
        inner.hnsw.efSearch = options.hnsw_ef_search
    elif kind == "ivfpq":
        inner.nprobe = options.ivf_nprobe


def on_gpu(index: faiss.Index, kind: str, options: FaissOptions) -> tuple[faiss.Index, Any]:
    """The index on the first CUDA device when faiss-gpu sees one (flat and IVF; FAISS has no
    GPU HNSW), else unchanged. Returns the GPU resources too: they must outlive the index."""
    if options.gpu == "off" or kind == "hnsw":
        return index, None
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus == 0 or not hasattr(faiss, "StandardGpuResources"):
        if options.gpu == "on":
            if not hasattr(faiss, "StandardGpuResources"):
                raise MissingExtra(
                    "gpu",
                    "SEMSEARCH_FAISS_GPU=on",
                    "faiss-gpu-cu12",
                    "this faiss has no GPU support; faiss-cpu installs the same `faiss` module, "
                    "so remove it after: pip uninstall -y faiss-cpu && "
                    "pip install --force-reinstall faiss-gpu-cu12",
                )
            raise SemsearchError("SEMSEARCH_FAISS_GPU=on but faiss sees no GPU on this machine")
        return index, None
    resources = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(resources, 0, index), resources
