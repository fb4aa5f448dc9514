"""Reaching Qdrant: connection options, one shared client per Qdrant, and the collection
metadata that marks a Qdrant collection as ours (model, dimension, generation)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import GatewaySettings
from app.errors import IndexUnavailable, InvalidInput
from app.extras import require

META_KEY = "semsearch"
FORMAT = 2  # versioned points; format 1 wrote in place
LEXICAL = "lexical"  # the sparse vector holding a point's BM25 term weights


def qdrant_client() -> Any:
    """The qdrant_client module (the `qdrant` extra)."""
    return require("qdrant_client", "qdrant", "the Qdrant index backend")


def qdrant_models() -> Any:
    """qdrant_client.models (the `qdrant` extra)."""
    return require("qdrant_client.models", "qdrant", "the Qdrant index backend")


@dataclass(frozen=True)
class QdrantOptions:
    url: str | None
    path: Path | None
    api_key: str | None
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef_search: int
    shards: int
    replication_factor: int
    exact: bool  # brute force: for congruence checks against FAISS flat
    lexical: bool  # new collections get sparse BM25 vectors

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
            lexical=settings.lexical_index,
        )

    @property
    def where(self) -> str:
        return self.url or str(self.path)


class Clients:
    """One client per Qdrant (local mode allows only one per folder), shared by collections
    and closed with the last of them."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[Any, int]] = {}

    def acquire(self, options: QdrantOptions) -> Any:
        key = options.where
        if key not in self._open:
            if options.url:
                client = qdrant_client().AsyncQdrantClient(
                    url=options.url, api_key=options.api_key, timeout=10
                )
            else:
                assert options.path is not None
                options.path.mkdir(parents=True, exist_ok=True)
                try:
                    client = qdrant_client().AsyncQdrantClient(path=str(options.path))
                except RuntimeError as exc:  # the folder's lock is held by another process
                    raise IndexUnavailable(
                        f"qdrant storage folder {options.path} is in use by another process "
                        "(local mode serves one process at a time; to share a collection, "
                        f"run a Qdrant server and set SEMSEARCH_QDRANT_URL): {exc}"
                    ) from exc
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


clients = Clients()


async def list_collections(options: QdrantOptions) -> list[str]:
    """The semsearch collections in this Qdrant (those carrying our metadata).

    Raises:
        IndexUnavailable: Qdrant did not answer.
    """
    client = clients.acquire(options)
    try:
        names = [c.name for c in (await client.get_collections()).collections]
        found = []
        for name in names:
            meta = (await client.get_collection(name)).config.metadata or {}
            ours = meta.get(META_KEY)
            if isinstance(ours, dict) and "migrating" not in ours:  # not a copy in the making
                found.append(name)
        return sorted(found)
    except Exception as exc:
        raise IndexUnavailable(f"qdrant at {options.where}: {exc!r}") from exc
    finally:
        await clients.release(options)


async def create_collection(
    client: Any, options: QdrantOptions, name: str, meta: dict[str, Any]
) -> None:
    """A Qdrant collection for a semsearch collection: the dense vectors (dot product, HNSW as
    configured), the sparse lexical vectors with Qdrant's IDF modifier, our metadata, and (on a
    server) payload indexes for the fields every search filters on."""
    models = qdrant_models()
    await client.create_collection(
        name,
        vectors_config=models.VectorParams(
            size=int(meta["dimension"]),
            distance=models.Distance.DOT,  # unit vectors: the same scores as FAISS IP
            hnsw_config=models.HnswConfigDiff(
                m=options.hnsw_m, ef_construct=options.hnsw_ef_construction
            ),
        ),
        sparse_vectors_config=(
            {LEXICAL: models.SparseVectorParams(modifier=models.Modifier.IDF)}
            if meta.get("lexical")
            else None
        ),
        shard_number=options.shards,
        replication_factor=options.replication_factor,
        metadata={META_KEY: meta},
    )
    if options.url:  # local mode scans payloads; it has no payload indexes
        for field, schema in (
            ("id", models.PayloadSchemaType.KEYWORD),
            ("parent", models.PayloadSchemaType.KEYWORD),
            ("added", models.PayloadSchemaType.INTEGER),
            ("retired", models.PayloadSchemaType.INTEGER),
        ):
            await client.create_payload_index(name, field_name=field, field_schema=schema)


async def read_meta(client: Any, name: str) -> dict[str, Any] | None:
    """Our metadata of collection `name`; None when it does not exist or is not ours.

    Raises:
        InvalidInput: it was written by a semsearch with another point layout.
        IndexUnavailable: Qdrant did not answer.
    """
    try:
        if not await client.collection_exists(name):
            return None
        meta = (await client.get_collection(name)).config.metadata or {}
    except Exception as exc:  # unreachable or failing: the caller's fallback may still answer
        raise IndexUnavailable(f"qdrant: {exc!r}") from exc
    value = meta.get(META_KEY)
    if not isinstance(value, dict):
        return None
    if value.get("format") != FORMAT:
        raise InvalidInput(
            f"collection {name!r} was written by an older semsearch; delete it in Qdrant and "
            "index again",
            field="collection",
        )
    return dict(value)
