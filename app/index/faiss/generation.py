"""One published generation of a FAISS collection, loaded for searching: the index, the raw
vectors (memory-mapped) and the documents' SQLite snapshot. Immutable; safe across threads."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
import orjson

from app.errors import IndexUnavailable
from app.index.faiss.build import FaissOptions, on_gpu, refine, set_search_params
from app.index.faiss.layout import CollectionLayout
from app.index.faiss.lexical import DIRNAME as LEXICAL_DIRNAME
from app.index.faiss.lexical import LexicalReader
from app.types import Document, Filter, FloatArray, Hit

_LONG_NUMBER = re.compile(r"\d{19}")  # 2**63 has 19 digits
_MMAP_BYTES = 2**30  # address space only: pages are read (and cached by the OS) as touched

# faiss ships partial stubs without the search-parameter classes and index attributes
_faiss: Any = faiss

# FAISS splits a search across OpenMP threads by query, so a lone query runs on one thread
# whatever the setting, but its whole team wakes up and, when done, spins waiting for more
# (faiss's wheel bundles a libgomp of its own, apart from torch's). On 2 cores that spinning
# took the cores the embedder's threads needed next: in-process, a query's embedding took
# 28-32 ms right after an ANN search against 24-27 ms without one between (OMP_WAIT_POLICY=
# PASSIVE removed the difference). So a search of one query runs single-threaded; batches of
# queries (evaluation) keep every thread. The setting is per calling thread in libgomp, so it
# is made on each search.
_TEAM = faiss.omp_get_max_threads()

# Rows a generation keeps in memory once read (id, title, text, metadata), up to about this
# many bytes for all generations of the process together (a gateway serving many collections
# must not hold this much per collection): a generation never changes, so its rows never go
# stale. The first rows read are kept and none is evicted; queries' favourite rows come early,
# and a lookup stays a dictionary's. A generation gives its share back when it is dropped
# (replaced by a newer one and no search holds it). Reading a lone search's hundred
# candidates from SQLite and decoding their metadata took 0.8 of the 1.1 ms of turning its
# FAISS result into hits (SciFact, 10k chunks, this 2-core host). Rows past the bound are read
# each time.
_ROWS_KEPT_BYTES = 64 * 2**20
_ROW_OVERHEAD = 600  # bytes per kept row beyond its strings: the tuple, the entry, the key
_Row = tuple[str, str, str, dict[str, Any]]  # id, title, text, metadata


class _KeptBytes:
    """Bytes of kept rows: one for the whole process, one per generation."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


_KEPT = _KeptBytes()
# Rows are kept from worker threads and the loop, and given back from whichever thread drops
# a generation: without the lock a lost update would stay in the process's count for good.
# Reentrant: a finalizer may run on a thread inside `_keep` (a collection), not deadlock it.
_KEPT_LOCK = threading.RLock()


def _keep(kept: _KeptBytes, size: int) -> None:
    with _KEPT_LOCK:
        kept.bytes += size
        _KEPT.bytes += size


def _give_back(kept: _KeptBytes) -> None:
    with _KEPT_LOCK:
        _KEPT.bytes -= kept.bytes


class Generation:
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
        self.index, self._gpu = on_gpu(index, self.kind, options)
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
        # read from worker threads and the loop alike: a dict's get and set are atomic
        self._rows: dict[int, _Row] = {}
        self._kept = _KeptBytes()
        weakref.finalize(self, _give_back, self._kept)
        lexical = path / LEXICAL_DIRNAME
        # generations published before lexical search existed have none: dense only
        self.lexical = LexicalReader(lexical) if lexical.is_dir() else None

    @property
    def count(self) -> int:
        return len(self.seqs)

    def lexical_search(
        self, texts: Sequence[str], k: int, filter: Filter | None
    ) -> list[list[Hit]]:
        """BM25 top `k` per text from the generation's tantivy index (see faiss/lexical.py)."""
        if self.lexical is None:
            raise IndexUnavailable("this generation has no lexical index")
        allowed = None if filter is None else self.allowed(filter)
        found = [self.lexical.search(text, k, allowed) for text in texts]
        width = max((len(ids) for _, ids in found), default=0)
        scores = np.full((len(texts), width), -np.inf, dtype=np.float32)
        ids = np.full((len(texts), width), -1, dtype=np.int64)
        for row, (row_scores, row_ids) in enumerate(found):
            scores[row, : len(row_ids)], ids[row, : len(row_ids)] = row_scores, row_ids
        return self.hits(scores, ids)

    def _docs(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._docs_uri, uri=True)
            # read through the OS page cache, not a per-connection copy: a search's hundred
            # candidates read in 0.48 ms instead of 0.65 ms (SciFact, this 2-core host)
            db.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
            self._local.db = db
        return db

    def search(self, vectors: FloatArray, k: int, filter: Filter | None) -> list[list[Hit]]:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        faiss.omp_set_num_threads(1 if len(vectors) == 1 else _TEAM)
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

    def documents(self) -> int:
        """Source documents in this generation: unchunked records and first chunks (ids hold
        '#' only as the chunk mark)."""
        row = (
            self._docs()
            .execute("SELECT count(*) FROM docs WHERE instr(id, '#') = 0 OR id LIKE '%#0'")
            .fetchone()
        )
        return int(row[0])

    def records(self, parents: Sequence[str]) -> dict[str, list[Document]]:
        """The records of each of `parents` found in this generation, chunks in order."""
        found: dict[str, list[Document]] = {}
        for parent in parents:
            # a chunk's id is `parent#n`: '#' then digits, and '$' sorts right after '#'
            rows = self._docs().execute(
                "SELECT id, title, text, metadata FROM docs WHERE id = ? OR (id > ? AND id < ?)",
                (parent, parent + "#", parent + "$"),
            )
            records = [
                Document(doc_id, text, title, _metadata(metadata), parent)
                for doc_id, title, text, metadata in rows
            ]
            if records:
                records.sort(key=lambda doc: int(doc.metadata.get("chunk", 0)))
                found[parent] = records
        return found

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> list[list[Hit]]:
        """FAISS results as hits: ids, texts and metadata from the generation's store (rows
        read before come from memory, see `_ROWS_KEPT_BYTES`).

        Numbers leave numpy as lists first: iterating arrays makes a numpy scalar of each."""
        rows = self._rows
        wanted = np.unique(ids[ids >= 0]).tolist()
        missing = [seq for seq in wanted if seq not in rows]
        read: dict[int, _Row] = {}
        kept = 0  # bytes of the rows this call keeps, counted in once at the end
        for start in range(0, len(missing), 900):  # SQLite's bound-parameter limit
            part = missing[start : start + 900]
            marks = ",".join("?" * len(part))
            found = self._docs().execute(
                f"SELECT seq, id, title, text, metadata FROM docs WHERE seq IN ({marks})", part
            )
            for seq, doc_id, title, text, metadata in found:
                row = read[seq] = (doc_id, title, text, _metadata(metadata))
                if _KEPT.bytes + kept < _ROWS_KEPT_BYTES:
                    rows[seq] = row
                    kept += _row_bytes(doc_id, title, text, metadata)
        if kept:
            _keep(self._kept, kept)
        results: list[list[Hit]] = []
        for row_scores, row_ids in zip(scores.tolist(), ids.tolist(), strict=True):
            hits = []
            for score, seq in zip(row_scores, row_ids, strict=True):
                doc = rows.get(seq) or read.get(seq)
                if doc is not None:
                    doc_id, title, text, metadata = doc
                    hits.append(Hit(doc_id, score, text, title, metadata))
            results.append(hits)
        return results


def _row_bytes(doc_id: str, title: str, text: str, metadata: str) -> int:
    """Memory a kept row takes, about: its strings as Python stores them (1-4 bytes a
    character), its parsed metadata at three times its JSON, and the rest."""
    strings = sys.getsizeof(doc_id) + sys.getsizeof(title) + sys.getsizeof(text)
    return strings + 3 * len(metadata) + _ROW_OVERHEAD


def _metadata(stored: str) -> dict[str, Any]:
    """A record's metadata from its JSON text (written by json.dumps). orjson reads a
    search's hundred in 0.01 ms where json took 0.2 ms, but it reads an integer past 64 bits
    as a float, silently: text holding such a long number goes to json."""
    found: dict[str, Any] = (
        json.loads(stored) if _LONG_NUMBER.search(stored) else orjson.loads(stored)
    )
    return found


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
