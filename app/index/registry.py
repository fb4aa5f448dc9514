"""Opening collections (primary + optional fallback), and the set a gateway serves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from app import metrics
from app.config import GatewaySettings
from app.errors import IndexUnavailable, NotFound
from app.index import VectorIndex
from app.index.faiss_index import FaissIndex, FaissOptions
from app.index.fallback import FallbackIndex
from app.index.generations import CollectionLayout, validate_collection_name
from app.index.qdrant_index import QdrantIndex, QdrantOptions, list_collections
from app.logs import get_logger
from app.resilience import BreakerPolicy, CircuitBreaker

log = get_logger(__name__)


def breaker_policy(settings: GatewaySettings) -> BreakerPolicy:
    return BreakerPolicy(
        failure_threshold=settings.breaker_failure_threshold,
        window_s=settings.breaker_window_s,
        error_rate=settings.breaker_error_rate,
        min_calls=settings.breaker_min_calls,
        recovery_s=settings.breaker_recovery_s,
    )


async def open_collection(
    settings: GatewaySettings, name: str, create: tuple[str, int] | None = None
) -> VectorIndex:
    """Collection `name` as configured: the primary index (FAISS or Qdrant), wrapped with the
    FAISS fallback copy when `fallback_index_dir` is set. `create=(model_id, dimension)`
    creates what is missing (for writing); without it a missing collection is NotFound."""

    options = FaissOptions.from_settings(settings)
    qdrant = QdrantOptions.from_settings(settings)

    async def faiss_at(index_dir: Path) -> VectorIndex:
        if create is not None:
            return await FaissIndex.create(index_dir, name, *create, options=options)
        return await FaissIndex.open(index_dir, name, options)

    primary: VectorIndex | None = None
    if settings.index_backend == "qdrant":
        try:
            if create is not None:
                primary = await QdrantIndex.create(qdrant, name, *create)
            else:
                primary = await QdrantIndex.open(qdrant, name)
        except IndexUnavailable:
            if create is not None or settings.fallback_index_dir is None:
                raise
            # Qdrant is down as the gateway starts: the fallback copy serves until it answers
    else:
        primary = await faiss_at(settings.index_dir)
    if settings.fallback_index_dir is None:
        assert primary is not None
        return primary
    try:
        fallback = await faiss_at(settings.fallback_index_dir)
    except NotFound:
        if primary is None:
            raise
        # indexed before the fallback was configured: serve what there is
        log.warning(
            "fallback_copy_missing",
            collection=name,
            hint="re-run `semsearch index` on this collection to write the fallback copy",
        )
        return primary
    except BaseException:
        if primary is not None:
            await primary.close()
        raise
    if primary is None:
        log.warning("primary_index_unreachable", collection=name, serving="fallback copy")
        primary = QdrantIndex.unreached(qdrant, name, fallback.model_id, fallback.dimension)
    breaker = CircuitBreaker(f"index:{name}", breaker_policy(settings))
    return FallbackIndex(primary, fallback, breaker)


async def collection_names(settings: GatewaySettings) -> list[str]:
    """The collections the configured primary index holds (those of the fallback copy while
    Qdrant does not answer)."""
    if settings.index_backend == "qdrant":
        try:
            return await list_collections(QdrantOptions.from_settings(settings))
        except IndexUnavailable:
            if settings.fallback_index_dir is None:
                raise
            log.warning("collections_listed_from_fallback", reason="qdrant did not answer")
            return _faiss_collections(settings.fallback_index_dir)
    return _faiss_collections(settings.index_dir)


def _faiss_collections(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(
        child.name
        for child in root.iterdir()
        if child.is_dir() and CollectionLayout(root, child.name).exists()
    )


def where(settings: GatewaySettings) -> str:
    """Where the configured primary index lives, for messages."""
    if settings.index_backend == "qdrant":
        return f"qdrant at {QdrantOptions.from_settings(settings).where}"
    return str(settings.index_dir)


class Collections:
    """Name -> open `VectorIndex`. Collections created after start are found on first use."""

    def __init__(
        self,
        opener: Callable[[str], Awaitable[VectorIndex]],
        discover: Callable[[], Awaitable[list[str]]],
    ) -> None:
        self._opener = opener
        self._discover = discover
        self._open: dict[str, VectorIndex] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Collections:
        return cls(lambda name: open_collection(settings, name), lambda: collection_names(settings))

    async def start(self) -> None:
        try:
            names = await self._discover()
        except Exception as exc:  # the index is down: collections open on first use
            log.error("collection_discovery_failed", error=repr(exc))
            names = []
        if not names:
            log.warning("no_collections", hint="run `semsearch index PATH --collection NAME`")
        for name in names:
            try:
                await self.get(name)
            except Exception as exc:  # one broken collection must not keep the rest down
                log.error("collection_open_failed", collection=name, error=repr(exc))

    async def get(self, name: str) -> VectorIndex:
        """The open collection `name`.

        Raises:
            InvalidInput: `name` is not a valid collection name.
            NotFound: no such collection.
        """
        index = self._open.get(name)
        if index is not None:
            return index
        validate_collection_name(name)
        async with self._lock:
            if name not in self._open:
                try:
                    self._open[name] = await self._opener(name)
                except NotFound:
                    known = ", ".join(sorted(self._open)) or "none yet"
                    raise NotFound(
                        f"collection {name!r} does not exist (known: {known})", field="collection"
                    ) from None
                await self._observe(self._open[name])
            return self._open[name]

    async def reload(self) -> list[str]:
        """Pick up newly published generations; returns the collections that changed."""
        changed = []
        for name, index in list(self._open.items()):
            try:
                if await index.reload():
                    changed.append(name)
                    await self._observe(index)
            except Exception as exc:  # a half-deleted directory must not stop the others
                log.error("generation_reload_failed", collection=name, error=repr(exc))
        return changed

    def names(self) -> list[str]:
        return sorted(self._open)

    def status(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for name, index in sorted(self._open.items()):
            entry: dict[str, object] = {
                "backend": index.backend,
                "generation": index.generation,
                "model": index.model_id,
            }
            if isinstance(index, FallbackIndex):
                entry["fallback"] = index.fallback.backend
                entry["primary_circuit"] = index.breaker.state.name.lower()
            out[name] = entry
        return out

    async def close(self) -> None:
        for index in self._open.values():
            await index.close()
        self._open.clear()

    @staticmethod
    async def _observe(index: VectorIndex) -> None:
        metrics.INDEX_GENERATION.labels(index.collection).set(index.generation)
        metrics.INDEX_DOCUMENTS.labels(index.collection).set(await index.count())
