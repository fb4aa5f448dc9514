"""Opening collections as configured (primary + optional fallback copy), and the set of open
collections a gateway serves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from app import metrics
from app.breaker import BreakerPolicy, CircuitBreaker
from app.config import GatewaySettings
from app.errors import (
    DeadlineExceeded,
    IndexUnavailable,
    InvalidInput,
    NotFound,
    SemsearchError,
)
from app.index.base import Collection
from app.index.faiss.build import FaissOptions
from app.index.faiss.index import FaissIndex
from app.index.faiss.layout import COLLECTION_NAME, CollectionLayout, validate_collection_name
from app.index.fallback import FallbackIndex, UnopenedIndex
from app.index.qdrant.connection import QdrantOptions, list_collections
from app.index.qdrant.index import QdrantIndex
from app.logs import get_logger

log = get_logger(__name__)


async def open_collection(
    settings: GatewaySettings, name: str, create: tuple[str, int] | None = None
) -> Collection:
    """Collection `name` as configured: the primary index (FAISS or Qdrant), wrapped with the
    FAISS fallback copy when `fallback_index_dir` is set. `create=(model_id, dimension)`
    creates what is missing (for writing); without it a missing collection is NotFound."""

    options = FaissOptions.from_settings(settings)
    qdrant = QdrantOptions.from_settings(settings)

    async def faiss_at(index_dir: Path, uid: str | None = None) -> Collection:
        if create is not None:
            return await FaissIndex.create(index_dir, name, *create, options=options, uid=uid)
        return await FaissIndex.open(index_dir, name, options)

    async def open_primary() -> Collection:
        if settings.index_backend == "qdrant":
            if create is not None:
                return await QdrantIndex.create(qdrant, name, *create)
            return await QdrantIndex.open(qdrant, name)
        return await faiss_at(settings.index_dir)

    if settings.fallback_index_dir is None or create is not None:
        primary = await open_primary()
        if settings.fallback_index_dir is None:
            return primary
        try:  # a new copy is the same collection: it takes the primary's identity
            fallback = await faiss_at(settings.fallback_index_dir, primary.uid)
        except BaseException:
            await primary.close()
            raise
        return _with_fallback(settings, primary, fallback)

    # Serving with a fallback copy: a primary that cannot be opened now (Qdrant down as the
    # gateway starts, a generation that fails to load) must not keep the copy from serving.
    failure: Exception | None = None
    try:
        primary = await open_primary()
    except NotFound:
        raise
    except Exception as exc:
        failure = exc
    try:
        fallback = await faiss_at(settings.fallback_index_dir)
    except NotFound:
        if failure is not None:
            raise failure from None
        # indexed before the fallback was configured: serve what there is
        log.warning(
            "fallback_copy_missing",
            collection=name,
            hint="re-run `semsearch index` on this collection to write the fallback copy",
        )
        return primary
    except BaseException:
        if failure is None:
            await primary.close()
        raise
    if failure is not None:
        reason = failure.message if isinstance(failure, SemsearchError) else repr(failure)
        log.warning("primary_index_unopened", collection=name, reason=reason, serving="fallback")
        primary = UnopenedIndex(settings.index_backend, fallback, reason, open_primary)
    return _with_fallback(settings, primary, fallback)


def _with_fallback(
    settings: GatewaySettings, primary: Collection, fallback: Collection
) -> FallbackIndex:
    return FallbackIndex(
        primary,
        fallback,
        CircuitBreaker(f"index:{fallback.collection}", BreakerPolicy.from_settings(settings)),
        primary_timeout_s=settings.primary_index_timeout_ms / 1000,
    )


class NothingStaged:
    """Stands in for a collection that does not exist yet, for a dry run (which must not
    create it): nothing is staged, so every document would be added."""

    def __init__(self, collection: str, model_id: str = "", dimension: int = 0) -> None:
        self.collection = collection
        self.model_id = model_id
        self.dimension = dimension

    async def children(self, parents: Sequence[str]) -> dict[str, dict[str, str]]:
        return {}

    async def close(self) -> None:
        return None


async def open_to_look(
    settings: GatewaySettings, name: str, model_id: str, dimension: int
) -> Collection | NothingStaged:
    """Collection `name` as a dry run sees it, opened so that nothing is written anywhere: no
    collection, lock file or SQLite journal is created, no fallback copy, no Qdrant folder.
    `NothingStaged` when it does not exist yet.

    Raises:
        InvalidInput: the collection holds vectors of another model.
    """
    options = FaissOptions.from_settings(settings)
    primary: Collection
    try:
        if settings.index_backend == "qdrant":
            qdrant = QdrantOptions.from_settings(settings)
            if qdrant.path is not None and not qdrant.path.is_dir():
                return NothingStaged(name)  # local mode would create its folder
            primary = await QdrantIndex.open(qdrant, name)
        else:
            primary = await FaissIndex.open(settings.index_dir, name, options, read_only=True)
    except NotFound:
        return NothingStaged(name)
    if (primary.model_id, primary.dimension) != (model_id, dimension):
        await primary.close()
        raise InvalidInput(
            f"collection {name!r} holds vectors of {primary.model_id!r} "
            f"({primary.dimension}-d), not of {model_id!r} ({dimension}-d)",
            field="collection",
        )
    if settings.fallback_index_dir is None:
        return primary
    fallback: Any
    try:
        fallback = await FaissIndex.open(settings.fallback_index_dir, name, options, read_only=True)
    except NotFound:  # the real run creates the copy and writes everything into it
        fallback = NothingStaged(name, primary.model_id, primary.dimension)
    return _with_fallback(settings, primary, fallback)  # counts as the real run would see them


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
        # not a collection: the write journal (.journal), a deletion in progress (.deleted-*)
        if child.is_dir()
        and COLLECTION_NAME.fullmatch(child.name)
        and CollectionLayout(root, child.name).exists()
    )


def where(settings: GatewaySettings) -> str:
    """Where the configured primary index lives, for messages."""
    if settings.index_backend == "qdrant":
        return f"qdrant at {QdrantOptions.from_settings(settings).where}"
    return str(settings.index_dir)


class Collections:
    """Name -> open `Collection`. Collections created after start are found on first use."""

    def __init__(
        self,
        opener: Callable[[str], Awaitable[Collection]],
        discover: Callable[[], Awaitable[list[str]]],
    ) -> None:
        self._opener = opener
        self._discover = discover
        self._open: dict[str, Collection] = {}
        self._opening: dict[str, asyncio.Task[Collection]] = {}

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

    async def get(self, name: str, wait_s: float | None = None) -> Collection:
        """The open collection `name`, opening it on first use.

        One opening per name at a time, shared by the requests that wait for it; other names
        do not wait behind it. A request stops waiting after `wait_s` (its deadline), while
        the opening goes on for the next one.

        Raises:
            InvalidInput: `name` is not a valid collection name.
            NotFound: no such collection.
            IndexUnavailable: it exists but could not be opened.
            DeadlineExceeded: not opened within `wait_s`.
        """
        index = self._open.get(name)
        if index is not None:
            return index
        validate_collection_name(name)
        opening = self._opening.get(name)
        if opening is None:
            opening = asyncio.create_task(self._open_one(name))
            self._opening[name] = opening
            opening.add_done_callback(lambda task: self._opened(name, task))
        try:
            return await asyncio.wait_for(asyncio.shield(opening), wait_s)
        except TimeoutError:
            raise DeadlineExceeded(f"collection {name!r} did not open in time") from None

    async def _open_one(self, name: str) -> Collection:
        try:
            index = await self._opener(name)
        except NotFound:
            known = ", ".join(sorted(self._open)) or "none yet"
            raise NotFound(
                f"collection {name!r} does not exist (known: {known})", field="collection"
            ) from None
        except SemsearchError:
            raise
        except Exception as exc:  # a corrupt file, a driver error: unavailable, not a crash
            raise IndexUnavailable(f"collection {name!r} could not be opened: {exc!r}") from exc
        self._open[name] = index
        await self._observe(index)
        return index

    def _opened(self, name: str, task: asyncio.Task[Collection]) -> None:
        self._opening.pop(name, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have given up already

    async def reload(self, only: str | None = None) -> list[str]:
        """Pick up newly published generations; returns the collections that changed. A
        collection deleted (or deleted and created again, by another process or replica) is
        closed and forgotten: the next search opens whatever has the name now, so no old
        generation is served under a new collection's name."""
        changed = []
        for name, index in list(self._open.items()):
            if only is not None and name != only:
                continue
            try:
                if await index.reload():
                    changed.append(name)
                    await self._observe(index)
            except NotFound as exc:
                log.info("collection_gone", collection=name, reason=exc.message)
                await self.forget(name)
                changed.append(name)
            except Exception as exc:  # a half-deleted directory must not stop the others
                log.error("generation_reload_failed", collection=name, error=repr(exc))
        return changed

    async def replace(self, name: str, index: Collection) -> None:
        """Serve `index` (just created or opened anew by this process) as collection `name`,
        closing the instance it replaces."""
        old = self._open.get(name)
        self._open[name] = index
        if old is not None and old is not index:
            await old.close()

    def opened(self, name: str) -> Collection | None:
        """Collection `name` if it is open, without opening it."""
        return self._open.get(name)

    async def forget(self, name: str) -> None:
        """Close collection `name` and stop serving it (it was deleted)."""
        index = self._open.pop(name, None)
        if index is not None:
            try:
                await index.close()
            except Exception as exc:  # its files may be gone already
                log.warning("collection_close_failed", collection=name, error=repr(exc))

    def names(self) -> list[str]:
        return sorted(self._open)

    def status(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for name, index in sorted(self._open.items()):
            calibration = index.calibration
            entry: dict[str, object] = {
                "backend": index.backend,
                "generation": index.generation,
                "model": index.model_id,
                "lexical": index.has_lexical,
                "fusion_weight": calibration.weight if calibration else None,
            }
            if isinstance(index, FallbackIndex):
                entry["fallback"] = index.fallback.backend
                entry["primary_circuit"] = index.breaker.state.name.lower()
            out[name] = entry
        return out

    async def close(self) -> None:
        for task in list(self._opening.values()):
            task.cancel()
        for index in self._open.values():
            await index.close()
        self._open.clear()

    @staticmethod
    async def _observe(index: Collection) -> None:
        metrics.INDEX_GENERATION.labels(index.collection).set(index.generation)
        metrics.INDEX_DOCUMENTS.labels(index.collection).set(await index.count())
