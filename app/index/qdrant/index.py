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

import uuid
from collections.abc import Sequence
from typing import Any

from app.errors import IndexUnavailable, InvalidInput, NotFound, SemsearchError
from app.index.qdrant.connection import (
    FORMAT,
    META_KEY,
    QdrantOptions,
    clients,
    qdrant_models,
    read_meta,
)
from app.index.vector import AnnResult, check_dimension
from app.logs import get_logger
from app.types import Document, Filter, FloatArray, Hit, content_hash

log = get_logger(__name__)

_NAMESPACE = uuid.UUID("7c4d2b1e-5a34-4f0e-9a57-1f3d1f6c2b90")
_UPSERT_BATCH = 256
_LOOKUP_BATCH = 256


def point_id(record_id: str, generation: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{record_id}\x00{generation}"))


class QdrantIndex:
    """A collection in Qdrant. See `app.index.VectorIndex`."""

    backend = "qdrant"

    def __init__(
        self, client: Any, options: QdrantOptions, name: str, meta: dict[str, Any]
    ) -> None:
        self._client = client
        self._options = options
        self._name = name
        self._model_id = str(meta["model"])
        self._dimension = int(meta["dimension"])
        self._generation = int(meta["generation"])
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
        cls, options: QdrantOptions, name: str, model_id: str, dimension: int
    ) -> QdrantIndex:
        """Open for writing, creating it (size, dot-product distance, HNSW settings) if new.

        Raises:
            InvalidInput: it exists with vectors of another model.
        """
        models = qdrant_models()

        client = clients.acquire(options)
        try:
            meta = await read_meta(client, name)
            if meta is None:
                meta = {
                    "model": model_id,
                    "dimension": dimension,
                    "generation": 0,
                    "format": FORMAT,
                }
                await client.create_collection(
                    name,
                    vectors_config=models.VectorParams(
                        size=dimension,
                        distance=models.Distance.DOT,  # unit vectors: the same scores as FAISS IP
                        hnsw_config=models.HnswConfigDiff(
                            m=options.hnsw_m, ef_construct=options.hnsw_ef_construction
                        ),
                    ),
                    shard_number=options.shards,
                    replication_factor=options.replication_factor,
                    metadata={META_KEY: meta},
                )
                for field, schema in (
                    ("id", models.PayloadSchemaType.KEYWORD),
                    ("parent", models.PayloadSchemaType.KEYWORD),
                    ("added", models.PayloadSchemaType.INTEGER),
                    ("retired", models.PayloadSchemaType.INTEGER),
                ):
                    if options.url:  # local mode scans payloads; it has no payload indexes
                        await client.create_payload_index(
                            name, field_name=field, field_schema=schema
                        )
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
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def _staged(self) -> int:
        """The generation this writer's changes will become."""
        return self._generation + 1

    async def count(self) -> int:
        try:
            found = await self._client.count(
                self._name, count_filter=_view(self._generation), exact=True
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
                filter=_view(generation, filter),
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
        hits = [[_hit(point) for point in response.points] for response in responses]
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
                filter=_view(self._generation),
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
        for start in range(0, len(documents), _UPSERT_BATCH):
            points = [
                models.PointStruct(
                    id=point_id(doc.id, self._staged),
                    vector=vector.tolist(),
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

    async def delete(self, ids: Sequence[str]) -> int:
        return await self._retire(list(dict.fromkeys(ids)))

    async def publish(self) -> int | None:
        """Make generation G + 1 current if this or a crashed earlier run staged anything."""
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
        await self._client.update_collection(self._name, metadata={META_KEY: meta})
        self._generation = staged
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
        if meta is None:
            return False
        generation = int(meta["generation"])
        if generation == self._generation:
            return False
        self._generation = generation
        return True

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
                    scroll_filter=_view(self._staged, extra=[condition]),
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


def _view(generation: int, filter: Filter | None = None, extra: list[Any] | None = None) -> Any:
    """The points generation `generation` sees, narrowed by a metadata filter."""
    models = qdrant_models()

    return models.Filter(
        must=[
            models.FieldCondition(key="added", range=models.Range(lte=generation)),
            *_metadata_conditions(filter),
            *(extra or []),
        ],
        must_not=[models.FieldCondition(key="retired", range=models.Range(lte=generation))],
    )


def _metadata_conditions(filter: Filter | None) -> list[Any]:
    """Our filter as Qdrant conditions, with the same meaning as on FAISS: equality or "any
    of", matching a scalar field or any element of an array field."""
    if not filter:
        return []
    models = qdrant_models()

    must: list[Any] = []
    for field, value in filter.items():
        key = f"metadata.{field}"
        values = value if isinstance(value, list) else [value]
        options: list[Any] = []
        for v in values:
            if isinstance(v, int | float) and not isinstance(v, bool):  # 2 and 2.0 alike
                options.append(models.FieldCondition(key=key, range=models.Range(gte=v, lte=v)))
            else:
                options.append(models.FieldCondition(key=key, match=models.MatchValue(value=v)))
        must.append(options[0] if len(options) == 1 else models.Filter(should=options))
    return must


def _hit(point: Any) -> Hit:
    payload = point.payload or {}
    return Hit(
        id=str(payload.get("id")),
        score=float(point.score),
        text=str(payload.get("text", "")),
        title=str(payload.get("title", "")),
        metadata=dict(payload.get("metadata") or {}),
    )
