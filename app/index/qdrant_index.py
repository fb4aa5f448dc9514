"""Qdrant backend: one Qdrant collection per semsearch collection.

Points carry the text, title, metadata, parent and content hash as payload; their ids are
UUIDv5 of the record id, so an upsert replaces. The collection's metadata holds the model id,
the dimension and the generation. Unlike FAISS generations, Qdrant writes are visible as they
land (Qdrant has no staged copy to swap); `publish()` bumps the generation, which changes
every cache key. A `pending` flag written before the first change of a run makes a crashed
run publish on its re-run, so stale cached answers cannot outlive it.

Server mode by URL (`SEMSEARCH_QDRANT_URL`); embedded local mode (`path=`, one process at a
time) is what tests use. Requires Qdrant >= 1.15 (collection metadata).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import GatewaySettings
from app.errors import IndexUnavailable, InvalidInput, NotFound, SemsearchError
from app.index import AnnResult, check_dimension, content_hash
from app.logs import get_logger
from app.types import Document, Filter, FloatArray, Hit

log = get_logger(__name__)

_NAMESPACE = uuid.UUID("7c4d2b1e-5a34-4f0e-9a57-1f3d1f6c2b90")
_META_KEY = "semsearch"
_UPSERT_BATCH = 256


def point_id(record_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, record_id))


@dataclass(frozen=True)
class QdrantOptions:
    url: str | None = None
    path: Path | None = None
    api_key: str | None = None
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    shards: int = 1
    replication_factor: int = 1
    exact: bool = False  # brute force: for congruence checks against FAISS flat

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> QdrantOptions:
        return cls(
            url=settings.qdrant_url,
            path=None
            if settings.qdrant_url
            else (settings.qdrant_path or settings.index_dir / "qdrant"),
            api_key=settings.qdrant_api_key,
            hnsw_m=settings.hnsw_m,
            hnsw_ef_construction=settings.hnsw_ef_construction,
            hnsw_ef_search=settings.hnsw_ef_search,
            shards=settings.qdrant_shards,
            replication_factor=settings.qdrant_replication_factor,
            exact=settings.qdrant_exact,
        )

    @property
    def where(self) -> str:
        return self.url or str(self.path)


class _Clients:
    """One client per Qdrant (local mode allows only one per folder), shared by collections
    and closed with the last of them."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[Any, int]] = {}

    def acquire(self, options: QdrantOptions) -> Any:
        from qdrant_client import AsyncQdrantClient

        key = options.where
        if key not in self._open:
            if options.url:
                client = AsyncQdrantClient(url=options.url, api_key=options.api_key, timeout=10)
            else:
                assert options.path is not None
                options.path.mkdir(parents=True, exist_ok=True)
                client = AsyncQdrantClient(path=str(options.path))
            self._open[key] = (client, 0)
        client, users = self._open[key]
        self._open[key] = (client, users + 1)
        return client

    async def release(self, options: QdrantOptions) -> None:
        client, users = self._open[options.where]
        if users > 1:
            self._open[options.where] = (client, users - 1)
            return
        del self._open[options.where]
        await client.close()


_clients = _Clients()


async def list_collections(options: QdrantOptions) -> list[str]:
    """The semsearch collections in this Qdrant (those carrying our metadata)."""
    client = _clients.acquire(options)
    try:
        names = [c.name for c in (await client.get_collections()).collections]
        found = []
        for name in names:
            meta = (await client.get_collection(name)).config.metadata or {}
            if _META_KEY in meta:
                found.append(name)
        return sorted(found)
    finally:
        await _clients.release(options)


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
        self._generation = int(meta.get("generation", 0))
        self._pending_marked = False

    @classmethod
    async def open(cls, options: QdrantOptions, name: str) -> QdrantIndex:
        """Raises: NotFound when the collection does not exist (or is not ours)."""
        client = _clients.acquire(options)
        try:
            meta = await _meta(client, name)
        except BaseException:
            await _clients.release(options)
            raise
        if meta is None:
            await _clients.release(options)
            raise NotFound(f"collection {name!r} does not exist", field="collection")
        return cls(client, options, name, meta)

    @classmethod
    async def create(
        cls, options: QdrantOptions, name: str, model_id: str, dimension: int
    ) -> QdrantIndex:
        """Open for writing, creating it (size, dot-product distance, HNSW settings) if new.

        Raises:
            InvalidInput: it exists with vectors of another model.
        """
        from qdrant_client import models

        client = _clients.acquire(options)
        try:
            meta = await _meta(client, name)
            if meta is None:
                meta = {
                    "model": model_id,
                    "dimension": dimension,
                    "generation": 0,
                    "pending": False,
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
                    metadata={_META_KEY: meta},
                )
                for field in ("parent", "id"):
                    await client.create_payload_index(
                        name, field_name=field, field_schema=models.PayloadSchemaType.KEYWORD
                    )
            elif (meta["model"], int(meta["dimension"])) != (model_id, dimension):
                raise InvalidInput(
                    f"collection {name!r} holds vectors of {meta['model']!r} "
                    f"({meta['dimension']}-d), not of {model_id!r} ({dimension}-d)",
                    field="collection",
                )
        except BaseException:
            await _clients.release(options)
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

    async def count(self) -> int:
        return int((await self._client.count(self._name, exact=True)).count)

    async def search(self, vectors: FloatArray, k: int, filter: Filter | None = None) -> AnnResult:
        from qdrant_client import models

        check_dimension(vectors, self._dimension, self._name)
        params = models.SearchParams(
            hnsw_ef=max(self._options.hnsw_ef_search, k), exact=self._options.exact
        )
        requests = [
            models.QueryRequest(
                query=vector.tolist(),
                limit=k,
                filter=_qdrant_filter(filter),
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
        return AnnResult(hits, self.backend, self._generation)

    async def children(self, parents: Sequence[str]) -> dict[str, dict[str, str]]:
        from qdrant_client import models

        found: dict[str, dict[str, str]] = {}
        for start in range(0, len(parents), 256):
            condition = models.Filter(
                must=[
                    models.FieldCondition(
                        key="parent", match=models.MatchAny(any=list(parents[start : start + 256]))
                    )
                ]
            )
            offset = None
            while True:
                points, offset = await self._client.scroll(
                    self._name,
                    scroll_filter=condition,
                    limit=1024,
                    offset=offset,
                    with_payload=["id", "parent", "hash"],
                    with_vectors=False,
                )
                for point in points:
                    payload = point.payload or {}
                    found.setdefault(payload["parent"], {})[payload["id"]] = payload["hash"]
                if offset is None:
                    break
        return found

    async def upsert(self, documents: Sequence[Document], vectors: FloatArray) -> None:
        from qdrant_client import models

        if len(documents) != len(vectors):
            raise ValueError("one vector per document")
        await self._mark_pending()
        for start in range(0, len(documents), _UPSERT_BATCH):
            points = [
                models.PointStruct(
                    id=point_id(doc.id),
                    vector=vector.tolist(),
                    payload={
                        "id": doc.id,
                        "parent": doc.parent_id,
                        "hash": content_hash(doc),
                        "title": doc.title,
                        "text": doc.text,
                        "metadata": doc.metadata,
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
        from qdrant_client import models

        if not ids:
            return 0
        present = await self._client.retrieve(
            self._name, ids=[point_id(i) for i in ids], with_payload=False, with_vectors=False
        )
        if not present:
            return 0
        await self._mark_pending()
        await self._client.delete(
            self._name,
            points_selector=models.PointIdsList(points=[p.id for p in present]),
            wait=True,
        )
        return len(present)

    async def publish(self) -> int | None:
        meta = await _meta(self._client, self._name)
        if meta is None or not meta.get("pending"):
            return None
        meta["generation"] = int(meta.get("generation", 0)) + 1
        meta["pending"] = False
        await self._client.update_collection(self._name, metadata={_META_KEY: meta})
        self._generation = meta["generation"]
        self._pending_marked = False
        log.info(
            "generation_published",
            collection=self._name,
            generation=self._generation,
            backend=self.backend,
        )
        return self._generation

    async def reload(self) -> bool:
        meta = await _meta(self._client, self._name)
        generation = int(meta.get("generation", 0)) if meta else self._generation
        if generation == self._generation:
            return False
        self._generation = generation
        return True

    async def close(self) -> None:
        await _clients.release(self._options)

    async def _mark_pending(self) -> None:
        """Before the first change of a run: a crash after it still leads to a publish."""
        if self._pending_marked:
            return
        meta = await _meta(self._client, self._name) or {}
        meta["pending"] = True
        await self._client.update_collection(self._name, metadata={_META_KEY: meta})
        self._pending_marked = True


async def _meta(client: Any, name: str) -> dict[str, Any] | None:
    if not await client.collection_exists(name):
        return None
    meta = (await client.get_collection(name)).config.metadata or {}
    value = meta.get(_META_KEY)
    return dict(value) if isinstance(value, dict) else None


def _qdrant_filter(filter: Filter | None) -> Any:
    """Our filter as Qdrant conditions, with the same meaning as on FAISS: equality or "any
    of", matching a scalar field or any element of an array field."""
    if not filter:
        return None
    from qdrant_client import models

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
    return models.Filter(must=must)


def _hit(point: Any) -> Hit:
    payload = point.payload or {}
    return Hit(
        id=str(payload.get("id")),
        score=float(point.score),
        text=str(payload.get("text", "")),
        title=str(payload.get("title", "")),
        metadata=dict(payload.get("metadata") or {}),
    )
