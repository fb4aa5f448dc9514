"""FAISS backend: inner product over unit vectors, documents in SQLite, immutable generations.

Searches read one published generation:

    index.faiss    flat (exact), HNSW or IVF-PQ, chosen by size or by setting
    vectors.f32    the raw vectors, memory-mapped (exact filtered search, recall checks)
    seqs.i64       row -> FAISS id of vectors.f32
    docs.sqlite    id, title, text, metadata per FAISS id (read-only, immutable)

Writes go to the collection's DocumentStore and become a new generation at `publish()`.
FAISS ids are the store's `seq`, so a hit is one primary-key lookup away from its text.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from app.config import GatewaySettings
from app.errors import InvalidInput, NotFound, SemsearchError
from app.index import AnnResult, check_dimension, content_hash
from app.index.generations import CollectionLayout, Manifest
from app.index.store import DocumentStore
from app.logs import get_logger
from app.types import Document, Filter, FloatArray, Hit

log = get_logger(__name__)
# faiss ships partial stubs without the search-parameter classes and index attributes
_faiss: Any = faiss

IndexType = Literal["flat", "hnsw", "ivfpq"]
FLAT_BELOW = 50_000  # auto: exact search is fast enough below this many vectors
HNSW_BELOW = 2_000_000  # auto: HNSW up to here, IVF-PQ (compressed) above
_ADD_BATCH = 65_536
PQ_MIN_VECTORS = 256  # PQ trains 256 centroids per sub-quantizer: fewer vectors cannot
IVF_POINTS_PER_LIST = 39  # FAISS's k-means wants this many training vectors per centroid


@dataclass(frozen=True)
class FaissOptions:
    """Build parameters (used at publish) and search parameters (used when loading)."""

    index_type: Literal["auto", "flat", "hnsw", "ivfpq"] = "auto"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    ivf_nlist: int = 0  # 0: 4 * sqrt(n)
    ivf_nprobe: int = 32
    pq_m: int = 0  # 0: dimension / 8 subquantizers (8 dimensions per code byte)
    ivf_refine: int = 30  # IVF-PQ: candidates fetched per result, re-scored exactly
    gpu: Literal["auto", "on", "off"] = "auto"
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


class _Generation:
    """One published generation, loaded for searching. Immutable; safe across threads."""

    def __init__(
        self,
        layout: CollectionLayout,
        number: int,
        options: FaissOptions,
        index: faiss.Index | None = None,
    ) -> None:
        path = layout.generation_path(number)
        self.number = number
        self.manifest = layout.read_manifest(number)
        self.options = options
        self.kind: str = self.manifest.index_type
        index = index if index is not None else faiss.read_index(str(path / "index.faiss"))
        set_search_params(index, self.kind, options)
        self.index, self._gpu = _maybe_on_gpu(index, self.kind, options)
        self.seqs = np.fromfile(path / "seqs.i64", dtype=np.int64)
        self.vectors: np.ndarray = (
            np.memmap(
                path / "vectors.f32",
                dtype=np.float32,
                mode="r",
                shape=(len(self.seqs), int(index.d)),
            )
            if len(self.seqs)
            else np.zeros((0, int(index.d)), np.float32)
        )
        # immutable=1: the file never changes once published, so SQLite can skip all locking
        self._docs_uri = f"file:{path / 'docs.sqlite'}?mode=ro&immutable=1"
        self._local = threading.local()
        self._filters: OrderedDict[str, np.ndarray] = OrderedDict()
        self._filters_lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self.seqs)

    def _docs(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._docs_uri, uri=True)
            self._local.db = db
        return db

    def search(self, vectors: FloatArray, k: int, filter: Filter | None) -> list[list[Hit]]:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        k = min(k, self.count)
        if k <= 0:
            return [[] for _ in range(len(vectors))]
        if filter is None:
            scores, ids = self.index.search(vectors, self._oversampled(k))
        else:
            scores, ids = self._filtered(vectors, k, self.allowed(filter))
        if self.kind == "ivfpq":
            scores, ids = refine(self.vectors, self.seqs, vectors, ids, k)
        return self.hits(scores, ids)

    def _oversampled(self, k: int) -> int:
        # PQ codes rank approximately: fetch more, re-score them exactly (see refine)
        return min(self.count, k * self.options.ivf_refine) if self.kind == "ivfpq" else k

    def exact(
        self, vectors: FloatArray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by brute force over the raw vectors (optionally a subset of FAISS ids)."""
        rows = np.arange(self.count) if allowed is None else np.searchsorted(self.seqs, allowed)
        scores = vectors @ np.asarray(self.vectors[rows]).T
        k = min(k, len(rows))
        top = (
            np.argpartition(-scores, k - 1, axis=1)[:, :k]
            if k
            else np.zeros((len(vectors), 0), int)
        )
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        return (
            np.take_along_axis(top_scores, order, axis=1),
            self.seqs[rows][np.take_along_axis(top, order, axis=1)],
        )

    def allowed(self, filter: Filter) -> np.ndarray:
        """FAISS ids whose metadata matches `filter` (cached per generation and filter)."""
        key = json.dumps(filter, sort_keys=True)
        with self._filters_lock:
            if key in self._filters:
                self._filters.move_to_end(key)
                return self._filters[key]
        clauses: list[str] = []
        params: list[Any] = []
        for field, value in filter.items():
            matches, values = _value_matches(value if isinstance(value, list) else [value])
            # json_each matches a scalar field and any element of an array field alike; the
            # members of an object field (text keys) are not its values
            clauses.append(
                "EXISTS (SELECT 1 FROM json_each(metadata, ?) "
                f"WHERE typeof(key) != 'text' AND ({matches}))"
            )
            params += [f'$."{field}"', *values]
        rows = self._docs().execute(
            f"SELECT seq FROM docs WHERE {' AND '.join(clauses)} ORDER BY seq", params
        )
        allowed = np.fromiter((r[0] for r in rows), dtype=np.int64)
        with self._filters_lock:
            self._filters[key] = allowed
            while len(self._filters) > 64:
                self._filters.popitem(last=False)
        return allowed

    def _filtered(
        self, vectors: FloatArray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        if len(allowed) == 0:
            return (np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64))
        if self.kind == "flat" or len(allowed) <= self.options.exact_filter_limit:
            return self.exact(vectors, k, allowed)
        selector = faiss.IDSelectorBatch(allowed)
        params: Any
        if self.kind == "hnsw":
            params = _faiss.SearchParametersHNSW(
                sel=selector, efSearch=max(self.options.hnsw_ef_search, 2 * k)
            )
        else:
            params = _faiss.SearchParametersIVF(sel=selector, nprobe=self.options.ivf_nprobe)
        scores, ids = self.index.search(vectors, self._oversampled(k), params=params)
        short = np.flatnonzero((ids >= 0).sum(axis=1) < min(k, len(allowed)))
        if len(short):
            # the ANN walk found fewer than k of the matches: answer those queries exactly
            exact_scores, exact_ids = self.exact(vectors[short], k, allowed)
            width = exact_ids.shape[1]
            scores[short], ids[short] = -np.inf, -1
            scores[short, :width], ids[short, :width] = exact_scores, exact_ids
        return scores, ids

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> list[list[Hit]]:
        """FAISS results as hits: ids, texts and metadata from the generation's store."""
        wanted = sorted({int(i) for i in ids.ravel() if i >= 0})
        docs: dict[int, tuple[str, str, str, str]] = {}
        for start in range(0, len(wanted), 900):  # SQLite's bound-parameter limit
            part = wanted[start : start + 900]
            marks = ",".join("?" * len(part))
            rows = self._docs().execute(
                f"SELECT seq, id, title, text, metadata FROM docs WHERE seq IN ({marks})", part
            )
            docs.update({row[0]: row[1:] for row in rows})
        results: list[list[Hit]] = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            hits = []
            for score, seq in zip(row_scores, row_ids, strict=True):
                doc = docs.get(int(seq))
                if seq < 0 or doc is None:
                    continue
                doc_id, title, text, metadata = doc
                hits.append(Hit(doc_id, float(score), text, title, json.loads(metadata)))
            results.append(hits)
        return results


def _value_matches(values: list[Any]) -> tuple[str, list[Any]]:
    """SQL matching a json_each row against `values` by JSON type, as Qdrant does: true and
    false are not the numbers 1 and 0 (json_each's `value` alone would say they are), numbers
    match numbers (2 and 2.0 alike), strings match strings."""
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    texts = [v for v in values if isinstance(v, str)]
    booleans = sorted({"true" if v else "false" for v in values if isinstance(v, bool)})
    options = [f"type = '{name}'" for name in booleans]  # JSON's true/false are types
    if numbers:
        options.append(
            f"(type IN ('integer', 'real') AND value IN ({','.join('?' * len(numbers))}))"
        )
    if texts:
        options.append(f"(type = 'text' AND value IN ({','.join('?' * len(texts))}))")
    return " OR ".join(options) or "0", [*numbers, *texts]


def set_search_params(index: faiss.Index, kind: str, options: FaissOptions) -> None:
    """efSearch (HNSW) and nprobe (IVF): search-time knobs, changeable without a rebuild."""
    inner: Any = (
        faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    )
    if kind == "hnsw":
        inner.hnsw.efSearch = options.hnsw_ef_search
    elif kind == "ivfpq":
        inner.nprobe = options.ivf_nprobe


def _maybe_on_gpu(index: faiss.Index, kind: str, options: FaissOptions) -> tuple[faiss.Index, Any]:
    """The index on the first CUDA device when faiss-gpu sees one (flat and IVF; FAISS has no
    GPU HNSW), else unchanged. Returns the GPU resources too: they must outlive the index."""
    if options.gpu == "off" or kind == "hnsw":
        return index, None
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus == 0 or not hasattr(faiss, "StandardGpuResources"):
        if options.gpu == "on":
            raise SemsearchError(
                "SEMSEARCH_FAISS_GPU=on but faiss sees no GPU (install the "
                "`gpu` extra on a CUDA machine)"
            )
        return index, None
    resources = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(resources, 0, index), resources


class FaissIndex:
    """A collection on local disk, searched with FAISS. See `app.index.VectorIndex`."""

    backend = "faiss"

    def __init__(
        self, layout: CollectionLayout, options: FaissOptions, read_only: bool = False
    ) -> None:
        info = layout.read_info()
        self._layout = layout
        self._options = options
        self._read_only = read_only
        self._model_id = info.model_id
        self._dimension = info.dimension
        self._generation: _Generation | None = None
        self._store: DocumentStore | None = None
        self._writing = ExitStack()

    @classmethod
    async def open(
        cls,
        index_dir: Path,
        name: str,
        options: FaissOptions | None = None,
        read_only: bool = False,
    ) -> FaissIndex:
        """Open an existing collection and load its published generation (if any).
        `read_only` (a dry run) writes no file at all: `children()` reads the staged store
        while keeping writers out, and writes raise.

        Raises:
            NotFound: there is no collection of that name under `index_dir`.
        """
        layout = CollectionLayout(index_dir, name)
        if not layout.exists():
            raise NotFound(f"collection {name!r} does not exist", field="collection")
        index = cls(layout, options or FaissOptions(), read_only)
        await index.reload()
        return index

    @classmethod
    async def create(
        cls,
        index_dir: Path,
        name: str,
        model_id: str,
        dimension: int,
        options: FaissOptions | None = None,
    ) -> FaissIndex:
        """Open a collection for writing, creating it for `model_id` if it is new.

        Raises:
            InvalidInput: the collection exists and was built with another model.
        """
        layout = CollectionLayout(index_dir, name)
        if layout.exists():
            info = layout.read_info()
            if (info.model_id, info.dimension) != (model_id, dimension):
                raise InvalidInput(
                    f"collection {name!r} holds vectors of {info.model_id!r} "
                    f"({info.dimension}-d), not of {model_id!r} ({dimension}-d): index into "
                    "a new collection, or delete this one first",
                    field="collection",
                )
        else:
            layout.create(model_id, dimension, cls.backend)
        return await cls.open(index_dir, name, options)

    @property
    def collection(self) -> str:
        return self._layout.name

    @property
    def generation(self) -> int:
        return self._generation.number if self._generation else 0

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def index_type(self) -> str | None:
        return self._generation.kind if self._generation else None

    async def count(self) -> int:
        return self._generation.count if self._generation else 0

    async def search(self, vectors: FloatArray, k: int, filter: Filter | None = None) -> AnnResult:
        generation = self._generation  # one generation for the whole call, even across a reload
        if generation is None:
            return AnnResult([[] for _ in range(len(vectors))], self.backend, 0)
        check_dimension(vectors, self._dimension, self.collection)
        hits = await asyncio.to_thread(generation.search, vectors, k, filter)
        return AnnResult(hits, self.backend, generation.number)

    async def exact_ids(self, vectors: FloatArray, k: int) -> list[list[str]]:
        """Record ids of the exact top-k (brute force): the reference for ANN recall, which
        compares them with what `search` returns."""
        generation = self._generation
        if generation is None:
            return [[] for _ in range(len(vectors))]
        check_dimension(vectors, self._dimension, self.collection)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)

        def exact() -> list[list[Hit]]:
            return generation.hits(*generation.exact(vectors, k))

        return [[hit.id for hit in hits] for hits in await asyncio.to_thread(exact)]

    async def reload(self) -> bool:
        number = self._layout.current_generation()
        if number == self.generation or number == 0:
            return False
        self._generation = await asyncio.to_thread(_Generation, self._layout, number, self._options)
        log.info(
            "generation_loaded",
            collection=self.collection,
            generation=number,
            documents=self._generation.count,
            index_type=self._generation.kind,
        )
        return True

    # -- writes -----------------------------------------------------------------------------

    def _writable_store(self) -> DocumentStore:
        if self._read_only:
            raise SemsearchError(f"collection {self.collection!r} was opened read-only")
        if self._store is None:
            self._writing.enter_context(self._layout.writer_lock())
            self._store = DocumentStore(self._layout.store_path)
            self._writing.callback(self._store.close)
        return self._store

    def _staged_children(self, parents: Sequence[str]) -> dict[str, dict[str, str]]:
        if not self._read_only:
            return self._writable_store().children(parents)
        if self._store is None:
            if not self._layout.store_path.exists():
                return {}  # nothing was ever staged
            self._writing.enter_context(self._layout.reader_lock())
            self._store = DocumentStore(self._layout.store_path, read_only=True)
            self._writing.callback(self._store.close)
        return self._store.children(parents)

    async def children(self, parents: Sequence[str]) -> dict[str, dict[str, str]]:
        return await asyncio.to_thread(self._staged_children, parents)

    async def upsert(self, documents: Sequence[Document], vectors: FloatArray) -> None:
        if len(documents) != len(vectors):
            raise ValueError("one vector per document")
        hashes = [content_hash(doc) for doc in documents]
        await asyncio.to_thread(self._writable_store().upsert, documents, hashes, vectors)

    async def delete(self, ids: Sequence[str]) -> int:
        return await asyncio.to_thread(self._writable_store().delete, ids)

    async def publish(self) -> int | None:
        return await asyncio.to_thread(self._publish)

    def _publish(self) -> int | None:
        store = self._writable_store()
        current = self._layout.current_generation()
        version = store.version
        if current and self._layout.read_manifest(current).store_version == version:
            return None
        if not current and version == 0:
            return None
        started = time.perf_counter()
        existing = [
            int(p.name.removeprefix("gen-")) for p in self._layout.generations_dir.glob("gen-*")
        ]
        number = max([current, *existing]) + 1
        staging = self._layout.staging_path(number)
        count = self._write_vectors(store, staging)
        vectors = (
            np.memmap(
                staging / "vectors.f32", dtype=np.float32, mode="r", shape=(count, self._dimension)
            )
            if count
            else np.zeros((0, self._dimension), np.float32)
        )
        seqs = np.fromfile(staging / "seqs.i64", dtype=np.int64)
        index, kind, params = build_index(vectors, seqs, self._options)
        faiss.write_index(index, str(staging / "index.faiss"))
        store.write_snapshot(staging / "docs.sqlite")
        manifest = Manifest(
            generation=number,
            count=count,
            store_version=version,
            index_type=kind,
            index_params=params,
            created_at=time.time(),
            build_seconds=round(time.perf_counter() - started, 3),
        )
        del vectors
        self._layout.commit_generation(staging, manifest)
        self._layout.prune()
        self._generation = _Generation(self._layout, number, self._options, index)
        log.info(
            "generation_published",
            collection=self.collection,
            generation=number,
            documents=count,
            index_type=kind,
            seconds=manifest.build_seconds,
        )
        return number

    def _write_vectors(self, store: DocumentStore, staging: Path) -> int:
        """Stream the store's vectors to vectors.f32 / seqs.i64 in FAISS-id order."""
        count = 0
        with (
            open(staging / "vectors.f32", "wb") as vectors,
            open(staging / "seqs.i64", "wb") as seqs,
        ):
            for ids, batch in store.iter_vectors(self._dimension):
                vectors.write(np.ascontiguousarray(batch, dtype=np.float32).tobytes())
                seqs.write(ids.astype(np.int64).tobytes())
                count += len(ids)
        return count

    async def close(self) -> None:
        self._writing.close()
        self._store = None
