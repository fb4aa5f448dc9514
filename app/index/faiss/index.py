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
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import faiss
import numpy as np

from app.errors import InvalidInput, NotFound, SemsearchError
from app.index.base import AnnResult, CollectionStats, check_dimension
from app.index.faiss.build import FaissOptions, build_index
from app.index.faiss.generation import Generation
from app.index.faiss.layout import CollectionLayout, Manifest
from app.index.faiss.lexical import DIRNAME as LEXICAL_DIRNAME
from app.index.faiss.lexical import write_lexical
from app.index.faiss.store import DocumentStore
from app.index.offload import Offload
from app.logs import get_logger
from app.types import Calibration, Document, Filter, FloatArray, Hit, content_hash

log = get_logger(__name__)
T = TypeVar("T")


class FaissIndex:
    """A collection on local disk, searched with FAISS. See `app.index.base.VectorIndex`."""

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
        self._uid = info.identity
        self._generation: Generation | None = None
        self._store: DocumentStore | None = None
        self._writing = ExitStack()
        # where a lone query's dense and lexical search run, by (generation, kind)
        self._offloads: dict[tuple[int, str], Offload] = {}

    @classmethod
    async def open(
        cls,
        index_dir: Path,
        name: str,
        options: FaissOptions,
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
        index = cls(layout, options, read_only)
        await index.reload()
        return index

    @classmethod
    async def create(
        cls,
        index_dir: Path,
        name: str,
        model_id: str,
        dimension: int,
        options: FaissOptions,
        uid: str | None = None,
    ) -> FaissIndex:
        """Open a collection for writing, creating it for `model_id` if it is new (with
        identity `uid`, a new one when not given: a fallback copy takes its primary's).

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
            layout.create(model_id, dimension, cls.backend, uid)
        return await cls.open(index_dir, name, options)

    @property
    def collection(self) -> str:
        return self._layout.name

    @property
    def generation(self) -> int:
        return self._generation.number if self._generation else 0

    @property
    def uid(self) -> str:
        return self._uid

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
        lone = len(vectors) == 1 and filter is None
        hits = await self._run(
            generation, "dense", lone, lambda: generation.search(vectors, k, filter)
        )
        return AnnResult(hits, self.backend, generation.number)

    async def _run(self, generation: Generation, kind: str, lone: bool, work: Callable[[], T]) -> T:
        """A lone unfiltered query's `work` where it costs least (`app.index.offload`); other
        work in a thread: a filter not yet cached scans the store for its matches, and a
        batch of queries runs FAISS's OpenMP team."""
        if not lone:
            return await asyncio.to_thread(work)
        offload = self._offloads.get((generation.number, kind))
        if offload is None:  # a new generation is measured anew: it may be far larger
            self._offloads = {
                key: known for key, known in self._offloads.items() if key[0] == generation.number
            }
            offload = self._offloads[generation.number, kind] = Offload()
        return await offload.run(work)

    @property
    def has_lexical(self) -> bool:
        return self._generation is not None and self._generation.lexical is not None

    async def lexical_search(
        self, texts: Sequence[str], k: int, filter: Filter | None = None
    ) -> AnnResult:
        generation = self._generation
        if generation is None:
            return AnnResult([[] for _ in texts], self.backend, 0)
        lone = len(texts) == 1 and filter is None
        hits = await self._run(
            generation, "lexical", lone, lambda: generation.lexical_search(texts, k, filter)
        )
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
        try:
            info = self._layout.read_info()
        except FileNotFoundError:
            info = None
        if info is None or info.identity != self._uid:
            raise NotFound(
                f"collection {self.collection!r} was deleted"
                + (" and created again" if info is not None else ""),
                field="collection",
            )
        number = self._layout.current_generation()
        if number == self.generation or number == 0:
            return False
        self._generation = await asyncio.to_thread(Generation, self._layout, number, self._options)
        log.info(
            "generation_loaded",
            collection=self.collection,
            generation=number,
            documents=self._generation.count,
            index_type=self._generation.kind,
        )
        if self._generation.lexical is None and self._options.lexical:
            log.warning(
                "no_lexical_index",
                collection=self.collection,
                serving="dense only",
                hint=f"`semsearch rebuild --collection {self.collection}` adds it from the "
                "stored documents without re-embedding anything",
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

    async def staged_hashes(self) -> dict[str, str]:
        """Every staged record's content hash, by id (what following another copy diffs)."""
        return await asyncio.to_thread(lambda: self._writable_store().hashes())

    @property
    def publishes_lexical(self) -> bool:
        return self._options.lexical

    @property
    def calibration(self) -> Calibration | None:
        found = self._generation.manifest.calibration if self._generation else None
        return Calibration(**found) if found else None

    async def sample(self, n: int, seed: int = 0) -> list[tuple[Document, FloatArray]]:
        return await asyncio.to_thread(self._writable_store().sample, n, seed)

    async def publish(
        self, rebuild: bool = False, calibration: Calibration | None = None
    ) -> int | None:
        return await asyncio.to_thread(self._publish, rebuild, calibration)

    def _publish(self, rebuild: bool, calibration: Calibration | None) -> int | None:
        store = self._writable_store()
        current = self._layout.current_generation()
        version = store.version
        unchanged = current and self._layout.read_manifest(current).store_version == version
        if unchanged and not rebuild:
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
        if self._options.lexical:
            write_lexical(staging / LEXICAL_DIRNAME, store.iter_passages())
        manifest = Manifest(
            generation=number,
            count=count,
            store_version=version,
            index_type=kind,
            index_params=params,
            created_at=time.time(),
            build_seconds=round(time.perf_counter() - started, 3),
            lexical=self._options.lexical,
            # a calibration carries over until a new one is made
            calibration=asdict(calibration) if calibration else self._carried_calibration(current),
        )
        del vectors
        self._layout.commit_generation(staging, manifest)
        self._layout.prune()
        self._generation = Generation(self._layout, number, self._options, index)
        log.info(
            "generation_published",
            collection=self.collection,
            generation=number,
            documents=count,
            index_type=kind,
            seconds=manifest.build_seconds,
        )
        return number

    def _carried_calibration(self, current: int) -> dict[str, Any] | None:
        return self._layout.read_manifest(current).calibration if current else None

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

    async def records(self, parents: Sequence[str]) -> dict[str, list[Document]]:
        generation = self._generation
        if generation is None:
            return {}
        return await asyncio.to_thread(generation.records, parents)

    async def stats(self) -> CollectionStats:
        generation = self._generation
        if generation is None:
            return CollectionStats(0, 0, None)
        documents = await asyncio.to_thread(generation.documents)
        return CollectionStats(documents, generation.count, generation.manifest.created_at)

    async def release(self) -> None:
        """Close the staged store and drop the writer lock; searches go on."""
        await asyncio.to_thread(self._writing.close)
        self._store = None

    async def close(self) -> None:
        self._writing.close()
        self._store = None
