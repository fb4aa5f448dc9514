"""Qdrant backend: one Qdrant collection per semsearch collection, with generations.

Qdrant has no staged copy of a collection to swap in, so generations live in the points:
each point is one version of a record, with `added` (the generation that wrote it) and, once
replaced or deleted, `retired` (the generation that dropped it) in its payload. Generation G
sees the points with `added <= G` and not `retired <= G`. A run writes generation G + 1: new
versions get `added = G + 1`, the versions they replace get `retired = G + 1`, and searches
on G see none of it. `publish()` is one write, the generation number in the collection's
metadata, so searches switch all at once, as with a FAISS pointer swap. A crashed run leaves
G serving; its re-run finds its staged writes (they are durable) and continues. Versions
retired by an earlier generation are deleted at the next publish, once no gateway can be
serving a generation that sees them.

Payload: record id, parent, content hash, title, text and metadata. Point ids are UUIDv5 of
(record id, generation), so re-writing a record within a run replaces its staged version.
One writer per collection at a time, as with FAISS. Server mode by URL
(`SEMSEARCH_QDRANT_URL`); embedded local mode (`path=`, one process at a time) is what tests
use. Requires Qdrant and qdrant-client >= 1.16 (collection metadata).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from typing import Any

from app.errors import IndexUnavailable, InvalidInput, NotFound, SemsearchError
from app.index.analyzer import query_vector, terms
from app.index.base import AnnResult, CollectionStats, check_dimension
from app.index.qdrant.connection import (
    FORMAT,
    LEXICAL,
    META_KEY,
    QdrantOptions,
    clients,
    create_collection,
    qdrant_models,
    read_meta,
)
from app.index.qdrant.migrate import add_lexical
from app.index.qdrant.points import hit, point_id, point_vectors, record, view
from app.logs import get_logger
from app.types import Calibration, Document, Filter, FloatArray, Hit, content_hash

log = get_logger(__name__)

_UPSERT_BATCH = 256
_LOOKUP_BATCH = 256


class QdrantIndex:
    """A collection in Qdrant. See `app.index.base.VectorIndex`."""

    backend = "qdrant"

    def __init__(
        self, client: Any, options: QdrantOptions, name: str, meta: dict[str, Any]
    ) -> None:
        self._client = client
        self._options = options
        self._name = name
        self._model_id = str(meta["model"])
        self._dimension = int(meta["dimension"])
        self._uid = _identity(name, meta)
        self._generation = int(meta["generation"])
        # collections written before lexical search have no sparse vectors: dense only
        self._lexical = bool(meta.get("lexical"))
        self._avg_terms: float | None = meta.get("avg_terms")
        self._calibration: dict[str, Any] | None = meta.get("calibration")
        self._closed = False

    @classmethod
    async def open(cls, options: QdrantOptions, name: str) -> QdrantIndex:
        """Raises: NotFound when the collection does not exist (or is not ours)."""
        client = clients.acquire(options)
        try:
            meta = await read_meta(client, name)
            if meta is None:
                raise NotFound(f"collection {name!r} does not exist", field="collection")
        except BaseException:
            await clients.release(options)
            raise
        return cls(client, options, name, meta)

    @classmethod
    async def create(
        cls,
        options: QdrantOptions,
        name: str,
        model_id: str,
        dimension: int,
        uid: str | None = None,
    ) -> QdrantIndex:
        """Open for writing, creating it (size, dot-product distance, HNSW settings) if new,
        with identity `uid` (a new one when not given).

        Raises:
            InvalidInput: it exists with vectors of another model.
        """
        client = clients.acquire(options)
        try:
            meta = await read_meta(client, name)
            if meta is None:
                meta = {
                    "model": model_id,
                    "dimension": dimension,
                    "generation": 0,
                    "format": FORMAT,
                    "lexical": options.lexical,
                    "uid": uid or uuid.uuid4().hex,
                }
                await create_collection(client, options, name, meta)
            elif (meta["model"], int(meta["dimension"])) != (model_id, dimension):
                raise InvalidInput(
                    f"collection {name!r} holds vectors of {meta['model']!r} "
                    f"({meta['dimension']}-d), not of {model_id!r} ({dimension}-d)",
                    field="collection",
                )
        except BaseException:
            await clients.release(options)
            raise
        return cls(client, options, name, meta)

    @property
    def collection(self) -> str:
        return self._name

    @property
    def generation(self) -> int:
        return self._generation

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
    def has_lexical(self) -> bool:
        return self._lexical

    @property
    def publishes_lexical(self) -> bool:
        # the sparse vectors are the collection's from its creation; only a rebuild adds them
        return self._lexical

    @property
    def calibration(self) -> Calibration | None:
        return Calibration(**self._calibration) if self._calibration else None

    async def sample(self, n: int, seed: int = 0) -> list[tuple[Document, FloatArray]]:
        """Up to `n` staged records at random, with their dense vectors (Qdrant draws them:
        `seed` is not used)."""
        models = qdrant_models()
        found = await self._client.query_points(
            self._name,
            query=models.SampleQuery(sample=models.Sample.RANDOM),
            query_filter=view(self._staged),
            limit=n,
            with_payload=True,
            with_vectors=True,
        )
        return [record(point) for point in found.points]

    @property
    def _staged(self) -> int:
        """The generation this writer's changes will become."""
        return self._generation + 1

    async def count(self) -> int:
        try:
            found = await self._client.count(
                self._name, count_filter=view(self._generation), exact=True
            )
        except Exception as exc:
            raise IndexUnavailable(f"qdrant at {self._options.where}: {exc!r}") from exc
        return int(found.count)

    async def search(self, vectors: FloatArray, k: int, filter: Filter | None = None) -> AnnResult:
        models = qdrant_models()

        check_dimension(vectors, self._dimension, self._name)
        generation = self._generation  # one generation for the whole batch
        params = (
            models.SearchParams(
                hnsw_ef=max(self._options.hnsw_ef_search, k), exact=self._options.exact
            )
            if self._options.url
            else None  # local mode always searches exactly
        )
        requests = [
            models.QueryRequest(
                query=vector.tolist(),
                limit=k,
                filter=view(generation, filter),
                params=params,
                with_payload=True,
            )
            for vector in vectors
        ]
        try:
            responses = await self._client.query_batch_points(self._name, requests=requests)
        except SemsearchError:
            raise
        except Exception as exc:
            raise IndexUnavailable(f"qdrant at {self._options.where}: {exc!r}") from exc
        hits = [[hit(point) for point in response.points] for response in responses]
        return AnnResult(hits, self.backend, generation)

    async def lexical_search(
        self, texts: Sequence[str], k: int, filter: Filter | None = None
    ) -> AnnResult:
        """BM25 through Qdrant's sparse vectors: our analyzer's term weights on the points,
        the collection's IDF modifier, the query's distinct terms (see app/index/lexical.py)."""
        models = qdrant_models()

        if not self._lexical:
            raise IndexUnavailable(f"collection {self._name!r} has no lexical index")
        generation = self._generation
        wanted = [(i, query_vector(text)) for i, text in enumerate(texts)]
        wanted = [(i, vector) for i, vector in wanted if vector.indices]  # no term: no hit
        requests = [
            models.QueryRequest(
                query=models.SparseVector(indices=vector.indices, values=vector.values),
                using=LEXICAL,
                limit=k,
                filter=view(generation, filter),
                with_payload=True,
            )
            for _, vector in wanted
        ]
        hits: list[list[Hit]] = [[] for _ in texts]
        if requests:
            try:
                responses = await self._client.query_batch_points(self._name, requests=requests)
            except Exception as exc:
                raise IndexUnavailable(f"qdrant at {self._options.where}: {exc!r}") from exc
            for (i, _), response in zip(wanted, responses, strict=True):
                hits[i] = [hit(point) for point in response.points]
        return AnnResult(hits, self.backend, generation)

    async def exact_ids(self, vectors: FloatArray, k: int) -> list[list[str]]:
        """Record ids of the exact top-k (Qdrant's brute force): the reference for ANN
        recall, which compares them with what `search` returns."""
        models = qdrant_models()

        check_dimension(vectors, self._dimension, self._name)
        # local mode always searches exactly and takes no search parameters
        params = models.SearchParams(exact=True) if self._options.url else None
        requests = [
            models.QueryRequest(
                query=vector.tolist(),
                limit=k,
                filter=view(self._generation),
                params=params,
                with_payload=["id"],
            )
            for vector in vectors
        ]
        try:
            responses = await self._client.query_batch_points(self._name, requests=requests)
        except Exception as exc:
            raise IndexUnavailable(f"qdrant at {self._options.where}: {exc!r}") from exc
        return [[str((p.payload or {}).get("id")) for p in r.points] for r in responses]

    async def children(self, parents: Sequence[str]) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for payload in await self._staged_versions("parent", parents, ["id", "parent", "hash"]):
            found.setdefault(payload["parent"], {})[payload["id"]] = payload["hash"]
        return found

    async def upsert(self, documents: Sequence[Document], vectors: FloatArray) -> None:
        models = qdrant_models()

        if len(documents) != len(vectors):
            raise ValueError("one vector per document")
        # Retire the versions these replace before writing the new ones: a crash in between
        # leaves the records missing from the staged view, so the re-run writes them again.
        await self._retire(list(dict.fromkeys(doc.id for doc in documents)))
        if self._lexical and self._avg_terms is None:
            await self._fix_avg_terms(documents)
        for start in range(0, len(documents), _UPSERT_BATCH):
            points = [
                models.PointStruct(
                    id=point_id(doc.id, self._staged),
                    vector=point_vectors(vector, doc, self._avg_terms if self._lexical else None),
                    payload={
                        "id": doc.id,
                        "parent": doc.parent_id,
                        "hash": content_hash(doc),
                        "title": doc.title,
                        "text": doc.text,
                        "metadata": doc.metadata,
                        "added": self._staged,
                    },
                )
                for doc, vector in zip(
                    documents[start : start + _UPSERT_BATCH],
                    vectors[start : start + _UPSERT_BATCH],
                    strict=True,
                )
            ]
            await self._client.upsert(self._name, points=points, wait=True)

    async def _fix_avg_terms(self, documents: Sequence[Document]) -> None:
        """BM25 normalizes a passage's length by the average: fixed from the first passages
        written (term weights are stored on the points, so it cannot follow the collection)."""
        meta = await read_meta(self._client, self._name)
        if meta is None:
            raise NotFound(f"collection {self._name!r} does not exist", field="collection")
        if meta.get("avg_terms") is None:
            lengths = [len(terms(doc.passage)) for doc in documents] or [1]
            meta["avg_terms"] = max(1.0, sum(lengths) / len(lengths))
            await self._client.update_collection(self._name, metadata={META_KEY: meta})
        self._avg_terms = float(meta["avg_terms"])

    async def delete(self, ids: Sequence[str]) -> int:
        return await self._retire(list(dict.fromkeys(ids)))

    async def publish(
        self, rebuild: bool = False, calibration: Calibration | None = None
    ) -> int | None:
        """Make generation G + 1 current if this or a crashed earlier run staged anything.
        `rebuild` also adds the lexical index to a collection written before it existed
        (copying the collection: see migrate.py), as one more generation."""
        published = await self._publish_staged(calibration)
        if not rebuild:
            return published
        changes: dict[str, Any] = {}
        if calibration is not None:
            changes["calibration"] = asdict(calibration)
        if not self._lexical and self._options.lexical:  # copied with one: a generation on
            self._apply(await add_lexical(self._client, self._options, self._name, changes))
        elif published is None:  # nothing was staged: one more generation, the rebuild's
            await self._write_meta(generation=self._generation + 1, **changes)
        return self._generation

    async def _write_meta(self, **changes: Any) -> None:
        meta = await read_meta(self._client, self._name)
        if meta is None:
            raise NotFound(f"collection {self._name!r} does not exist", field="collection")
        meta.update(changes)
        await self._client.update_collection(self._name, metadata={META_KEY: meta})
        self._apply(meta)

    async def _publish_staged(self, calibration: Calibration | None) -> int | None:
        models = qdrant_models()

        staged = self._staged
        changes = models.Filter(
            should=[
                models.FieldCondition(key="added", match=models.MatchValue(value=staged)),
                models.FieldCondition(key="retired", match=models.MatchValue(value=staged)),
            ]
        )
        if not (await self._client.count(self._name, count_filter=changes, exact=True)).count:
            return None
        meta = await read_meta(self._client, self._name)
        if meta is None:
            raise NotFound(f"collection {self._name!r} does not exist", field="collection")
        if int(meta["generation"]) != self._generation:
            raise SemsearchError(
                f"collection {self._name!r} was published by another writer meanwhile; "
                "run the indexer again"
            )
        meta["generation"] = staged
        meta["published_at"] = time.time()
        if calibration is not None:  # published with the generation it was measured on
            meta["calibration"] = asdict(calibration)
        await self._client.update_collection(self._name, metadata={META_KEY: meta})
        self._apply(meta)
        log.info(
            "generation_published", collection=self._name, generation=staged, backend=self.backend
        )
        # Versions retired by the previous generation or earlier are seen only by generations
        # before it, which gateways left within a reload interval of its publish.
        await self._client.delete(
            self._name,
            points_selector=models.FilterSelector(
                filter=models.Filter(
                    must=[models.FieldCondition(key="retired", range=models.Range(lt=staged))]
                )
            ),
            wait=False,
        )
        return staged

    async def reload(self) -> bool:
        meta = await read_meta(self._client, self._name)
        if meta is None or _identity(self._name, meta) != self._uid:
            raise NotFound(
                f"collection {self._name!r} was deleted"
                + (" and created again" if meta is not None else ""),
                field="collection",
            )
        if int(meta["generation"]) == self._generation:
            return False
        self._apply(meta)
        return True

    def _apply(self, meta: dict[str, Any]) -> None:
        self._generation = int(meta["generation"])
        self._lexical = bool(meta.get("lexical"))
        self._avg_terms = meta.get("avg_terms")
        self._calibration = meta.get("calibration")

    async def records(self, parents: Sequence[str]) -> dict[str, list[Document]]:
        models = qdrant_models()
        found: dict[str, list[Document]] = {}
        if not parents:
            return found
        condition = models.FieldCondition(key="parent", match=models.MatchAny(any=list(parents)))
        async for point in self._published(condition, limit=1024, payload=True):
            payload = point.payload or {}
            found.setdefault(payload["parent"], []).append(
                Document(
                    str(payload["id"]),
                    payload.get("text", ""),
                    payload.get("title", ""),
                    payload.get("metadata") or {},
                    str(payload["parent"]),
                )
            )
        for records in found.values():
            records.sort(key=lambda doc: int(doc.metadata.get("chunk", 0)))
        return found

    async def published_hashes(self) -> dict[str, str]:
        """Every record of the published generation: its content hash, by id."""
        return {
            str((point.payload or {})["id"]): str((point.payload or {})["hash"])
            async for point in self._published(None, limit=2048, payload=["id", "hash"])
        }

    async def published_records(self, ids: Sequence[str]) -> list[tuple[Document, FloatArray]]:
        """Records `ids` of the published generation, with their dense vectors."""
        models = qdrant_models()
        out: list[tuple[Document, FloatArray]] = []
        for start in range(0, len(ids), _LOOKUP_BATCH):
            condition = models.FieldCondition(
                key="id", match=models.MatchAny(any=list(ids[start : start + _LOOKUP_BATCH]))
            )
            async for point in self._published(condition, limit=1024, payload=True, vectors=True):
                out.append(record(point))
        return out

    async def _published(
        self,
        condition: Any,
        *,
        limit: int,
        payload: bool | list[str],
        vectors: bool = False,
    ) -> AsyncIterator[Any]:
        """The points of the published generation (matching `condition`), page by page."""
        offset = None
        extra = [condition] if condition is not None else None
        while True:
            points, offset = await self._client.scroll(
                self._name,
                scroll_filter=view(self._generation, extra=extra),
                limit=limit,
                offset=offset,
                with_payload=payload,
                with_vectors=vectors,
            )
            for point in points:
                yield point
            if offset is None:
                return

    async def stats(self) -> CollectionStats:
        models = qdrant_models()
        later_chunk = models.FieldCondition(key="metadata.chunk", range=models.Range(gt=0))
        documents = view(self._generation)
        documents.must_not = [*(documents.must_not or []), later_chunk]
        try:
            records = await self.count()
            found = await self._client.count(self._name, count_filter=documents, exact=True)
            meta = await read_meta(self._client, self._name)
        except IndexUnavailable:
            raise
        except Exception as exc:
            raise IndexUnavailable(f"qdrant at {self._options.where}: {exc!r}") from exc
        published = (meta or {}).get("published_at")
        return CollectionStats(int(found.count), records, float(published) if published else None)

    async def release(self) -> None:
        return None  # no lock of its own: the writer lease (app.ingest.lease) keeps turns

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await clients.release(self._options)

    async def _staged_versions(
        self, key: str, values: Sequence[str], fields: list[str]
    ) -> list[dict[str, Any]]:
        """Payloads of the staged view's points whose `key` is one of `values`."""
        models = qdrant_models()

        payloads: list[dict[str, Any]] = []
        for start in range(0, len(values), _LOOKUP_BATCH):
            condition = models.FieldCondition(
                key=key, match=models.MatchAny(any=list(values[start : start + _LOOKUP_BATCH]))
            )
            offset = None
            while True:
                points, offset = await self._client.scroll(
                    self._name,
                    scroll_filter=view(self._staged, extra=[condition]),
                    limit=1024,
                    offset=offset,
                    with_payload=fields,
                    with_vectors=False,
                )
                payloads.extend(point.payload or {} for point in points)
                if offset is None:
                    break
        return payloads

    async def _retire(self, ids: list[str]) -> int:
        """Drop `ids` from the staged view; returns how many were in it. Versions written by
        this generation were never published and are deleted; older ones are marked."""
        models = qdrant_models()

        if not ids:
            return 0
        versions = await self._staged_versions("id", ids, ["id", "added"])
        unpublished = [
            point_id(v["id"], self._staged) for v in versions if v["added"] == self._staged
        ]
        published = [point_id(v["id"], v["added"]) for v in versions if v["added"] != self._staged]
        if published:
            await self._client.set_payload(
                self._name,
                payload={"retired": self._staged},
                points=published,
                wait=True,
            )
        if unpublished:
            await self._client.delete(
                self._name, points_selector=models.PointIdsList(points=unpublished), wait=True
            )
        return len({v["id"] for v in versions})


def _identity(name: str, meta: dict[str, Any]) -> str:
    """The collection's `uid`; one derived from its name for a collection created before
    identities existed (such a collection, deleted and re-created, gets a real one)."""
    return str(meta.get("uid") or f"legacy-{name}")
