"""FAISS backend: exact inner product over unit vectors, documents in SQLite.

Searches read one immutable generation (index.faiss + docs.sqlite, both memory- or
read-only-mapped); writes go to the collection's DocumentStore and become a new generation at
`publish()`. FAISS ids are the store's `seq`, so a hit is one primary-key lookup away from its
text.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import faiss
import numpy as np

from app.errors import InvalidInput, NotFound
from app.index import AnnResult, content_hash
from app.index.generations import CollectionLayout, Manifest
from app.index.store import DocumentStore
from app.logs import get_logger
from app.types import Document, FloatArray, Hit

log = get_logger(__name__)


class _Generation:
    """One published generation, loaded for searching. Immutable; safe across threads."""

    def __init__(self, layout: CollectionLayout, number: int, index: faiss.Index | None = None):
        path = layout.generation_path(number)
        self.number = number
        self.manifest = layout.read_manifest(number)
        self.index = index if index is not None else faiss.read_index(str(path / "index.faiss"))
        # immutable=1: the file never changes once published, so SQLite can skip all locking
        self._docs_uri = f"file:{path / 'docs.sqlite'}?mode=ro&immutable=1"
        self._local = threading.local()

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def _docs(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._docs_uri, uri=True)
            self._local.db = db
        return db

    def search(self, vectors: FloatArray, k: int) -> list[list[Hit]]:
        k = min(k, self.count)
        if k <= 0:
            return [[] for _ in range(len(vectors))]
        scores, ids = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        wanted = sorted({int(i) for i in ids.ravel() if i >= 0})
        marks = ",".join("?" * len(wanted))
        rows = self._docs().execute(
            f"SELECT seq, id, title, text, metadata FROM docs WHERE seq IN ({marks})", wanted
        )
        docs = {row[0]: row[1:] for row in rows}
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


class FaissIndex:
    """A collection on local disk, searched with FAISS. See `app.index.VectorIndex`."""

    backend = "faiss"

    def __init__(self, layout: CollectionLayout) -> None:
        info = layout.read_info()
        self._layout = layout
        self._model_id = info.model_id
        self._dimension = info.dimension
        self._generation: _Generation | None = None
        self._store: DocumentStore | None = None
        self._writing = ExitStack()

    @classmethod
    async def open(cls, index_dir: Path, name: str) -> FaissIndex:
        """Open an existing collection and load its published generation (if any).

        Raises:
            NotFound: there is no collection of that name under `index_dir`.
        """
        layout = CollectionLayout(index_dir, name)
        if not layout.exists():
            raise NotFound(f"collection {name!r} does not exist", field="collection")
        index = cls(layout)
        await index.reload()
        return index

    @classmethod
    async def create(cls, index_dir: Path, name: str, model_id: str, dimension: int) -> FaissIndex:
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
        return await cls.open(index_dir, name)

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

    async def count(self) -> int:
        return self._generation.count if self._generation else 0

    async def search(self, vectors: FloatArray, k: int) -> AnnResult:
        generation = self._generation  # one generation for the whole call, even across a reload
        if generation is None:
            return AnnResult([[] for _ in range(len(vectors))], self.backend, 0)
        if vectors.ndim != 2 or vectors.shape[1] != self._dimension:
            raise InvalidInput(
                f"query vectors are {vectors.shape[-1]}-d; collection {self.collection!r} "
                f"holds {self._dimension}-d vectors"
            )
        hits = await asyncio.to_thread(generation.search, vectors, k)
        return AnnResult(hits, self.backend, generation.number)

    async def reload(self) -> bool:
        number = self._layout.current_generation()
        if number == self.generation or number == 0:
            return False
        self._generation = await asyncio.to_thread(_Generation, self._layout, number)
        log.info(
            "generation_loaded",
            collection=self.collection,
            generation=number,
            documents=self._generation.count,
        )
        return True

    # -- writes -----------------------------------------------------------------------------

    def _writable_store(self) -> DocumentStore:
        if self._store is None:
            self._writing.enter_context(self._layout.writer_lock())
            self._store = DocumentStore(self._layout.store_path)
            self._writing.callback(self._store.close)
        return self._store

    async def existing_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        return await asyncio.to_thread(self._writable_store().hashes, ids)

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
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(self._dimension))
        for ids, vectors in store.iter_vectors(self._dimension):
            index.add_with_ids(vectors, ids)
        faiss.write_index(index, str(staging / "index.faiss"))
        store.write_snapshot(staging / "docs.sqlite")
        manifest = Manifest(
            generation=number,
            count=int(index.ntotal),
            store_version=version,
            index_type="flat",
            created_at=time.time(),
            build_seconds=round(time.perf_counter() - started, 3),
        )
        self._layout.commit_generation(staging, manifest)
        self._layout.prune()
        self._generation = _Generation(self._layout, number, index)
        log.info(
            "generation_published",
            collection=self.collection,
            generation=number,
            documents=manifest.count,
            seconds=manifest.build_seconds,
        )
        return number

    async def close(self) -> None:
        self._writing.close()
        self._store = None
