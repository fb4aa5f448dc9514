"""The gateway's write side: documents written over HTTP, from acknowledgment to searchable.

    request -> validate -> journal (fsync: acknowledged, durable) -> 202 + write id
    per collection, one writer task:
        pending writes, in order -> the indexing core (chunk, diff by hash, embed behind
        searches, stage) -> publish at most every refresh interval (at once for ?wait=true)
        -> the writes are searchable in that generation

The indexing core is `app.ingest.indexer.index_documents`, the one `semsearch index` runs.
The writer writes through the collection the gateway serves, so its publish is seen at once
here (other replicas reload it). It holds the collection only while it applies or publishes
(`Collection.release`, the writer lease), so `semsearch index` and other replicas get turns.
A write that cannot be applied for now (embedder down, another writer busy) stays pending and
is tried again; one that never can be (the collection was deleted) is failed with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from app import metrics
from app.config import GatewaySettings
from app.errors import (
    Conflict,
    EmbedderUnavailable,
    NotFound,
    Overloaded,
)
from app.index.base import Collection
from app.index.collections import Collections
from app.index.fallback import FallbackIndex
from app.index.follow import follow, followable
from app.index.manage import create_collection, delete_collection, existing_model
from app.index.qdrant.index import QdrantIndex
from app.ingest.applier import CollectionWriter
from app.ingest.journal import JournaledWrite, WriteJournal, WriteKind, WriteStatus
from app.ingest.lease import WriterLeases
from app.logs import get_logger
from app.models import Embedder
from app.types import Document

log = get_logger(__name__)


@dataclass(frozen=True)
class WriterOptions:
    refresh_interval_s: float
    batch_size: int
    journal_max_bytes: int
    status_ttl_s: float
    drain_s: float
    fallback_sync_interval_s: float

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> WriterOptions:
        return cls(
            refresh_interval_s=settings.refresh_interval_s,
            batch_size=settings.index_batch_size,
            journal_max_bytes=settings.write_journal_max_bytes,
            status_ttl_s=settings.write_status_ttl_s,
            drain_s=settings.write_drain_s,
            fallback_sync_interval_s=settings.fallback_sync_interval_s,
        )


@dataclass(frozen=True)
class DocumentView:
    """A document as `GET .../documents/{id}` shows it."""

    id: str
    searchable: bool
    write_id: str | None
    generation: int | None
    document: Document | None  # the version written, while it is pending
    records: list[Document]  # what searches find (chunks in order)


class Writes:
    """Accepts writes (journaled before they are acknowledged), applies them per collection,
    answers their status, and creates and deletes collections."""

    def __init__(
        self,
        *,
        settings: GatewaySettings,
        journal: WriteJournal,
        collections: Collections,
        embedder: Embedder,
        leases: WriterLeases,
        options: WriterOptions,
    ) -> None:
        self._settings = settings
        self.journal = journal
        self.collections = collections
        self.embedder = embedder
        self.leases = leases
        self.options = options
        self._writers: dict[str, CollectionWriter] = {}
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._bytes_per_s = 0.0  # smoothed apply rate, for Retry-After
        self._follower: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls, settings: GatewaySettings, collections: Collections, embedder: Embedder
    ) -> Writes:
        return cls(
            settings=settings,
            journal=WriteJournal(settings.journal_dir),
            collections=collections,
            embedder=embedder,
            leases=WriterLeases(
                settings.redis_url if settings.index_backend == "qdrant" else None,
                settings.writer_lease_ttl_s,
            ),
            options=WriterOptions.from_settings(settings),
        )

    async def start(self) -> None:
        """Apply what a previous run acknowledged and did not make searchable; follow the
        primary into the fallback copies."""
        await asyncio.to_thread(self.journal.prune, self.options.status_ttl_s)
        for name in await asyncio.to_thread(self.journal.pending_collections):
            log.info("resuming_writes", collection=name)
            self._writer(name).wake()
        self._follower = asyncio.create_task(self._follow_fallbacks(), name="fallback-follower")

    async def _follow_fallbacks(self) -> None:
        """Every `fallback_sync_interval_s`: each fallback copy whose Qdrant primary published
        since it last followed gets what other replicas wrote (app.index.follow)."""
        followed: dict[str, int] = {}
        while True:
            await asyncio.sleep(self.options.fallback_sync_interval_s)
            for name in self.collections.names():
                index = self.collections.opened(name)
                if isinstance(index, QdrantIndex) and self._settings.fallback_index_dir:
                    index = await self._with_fallback_copy(name, index)
                if not isinstance(index, FallbackIndex) or not followable(index):
                    continue
                if followed.get(name) == index.generation:
                    continue
                try:
                    async with self.leases.local(name):
                        writer = self._writers.get(name)
                        if writer is not None and writer.unpublished:
                            continue  # staged here, not yet in Qdrant's view: later
                        try:
                            done = await follow(index)
                        finally:
                            await index.release()
                    followed[name] = done.generation
                except Exception as exc:  # Qdrant away: the next round tries again
                    log.warning("fallback_follow_failed", collection=name, error=repr(exc))

    async def stop(self) -> None:
        """Apply and publish what was acknowledged, for up to `drain_s` (what is left stays
        journaled for the next start), then stop."""
        await self._drain(self.options.drain_s)
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        for writer in list(self._writers.values()):
            await writer.stop()
        self._writers.clear()
        await self.leases.close()
        self.journal.close()

    async def _drain(self, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while self.journal.pending_writes and time.monotonic() < deadline:
            for name in await asyncio.to_thread(self.journal.pending_collections):
                self._writer(name).wake(urgent=True)
            await asyncio.sleep(0.05)
        if self.journal.pending_writes:
            log.warning(
                "writes_left_pending",
                writes=self.journal.pending_writes,
                hint="they are applied when the gateway starts again",
            )

    async def _with_fallback_copy(self, name: str, index: QdrantIndex) -> Collection | None:
        """Collection `name` served with a fallback copy on this replica's disk, created
        empty (and filled by following) when the collection came from another replica."""
        try:
            async with self.leases.local(name):
                copy, _ = await create_collection(
                    self._settings, name, index.model_id, index.dimension
                )
                await copy.release()
                await self.collections.replace(name, copy)
            return copy
        except Exception as exc:
            log.warning("fallback_copy_not_created", collection=name, error=repr(exc))
            return None

    # -- writes -----------------------------------------------------------------------------

    async def write(
        self,
        collection: str,
        documents: Sequence[Document] = (),
        ids: Sequence[str] = (),
    ) -> JournaledWrite:
        """Journal a write (upsert `documents`, or delete `ids`); durable when this returns.

        Raises:
            NotFound: no such collection.
            Conflict: the collection holds vectors of another model than the gateway's.
            Overloaded: the journal is full (Retry-After from the measured apply rate).
        """
        index = await self.collections.get(collection)
        if documents and self.embedder.ready and index.model_id != self.embedder.info.model_id:
            raise Conflict(
                f"collection {collection!r} holds vectors of {index.model_id!r}; this gateway "
                f"embeds with {self.embedder.info.model_id!r}",
                field="collection",
            )
        if self.journal.pending_bytes >= self.options.journal_max_bytes:
            metrics.SHED_REQUESTS.labels("write_journal_full").inc()
            raise Overloaded(
                f"the write journal holds {self.journal.pending_bytes} bytes not yet applied "
                f"(at most {self.options.journal_max_bytes})",
                retry_after_s=self._retry_after(),
            )
        kind = WriteKind.UPSERT if documents else WriteKind.DELETE
        write = await asyncio.to_thread(
            self.journal.append, collection, index.uid, kind, documents, ids
        )
        metrics.WRITES.labels(kind.value, "acknowledged").inc()
        self._writer(collection).wake()
        return write

    async def wait(self, write: JournaledWrite, timeout_s: float) -> WriteStatus:
        """The write's status once it is searchable or failed, or when `timeout_s` passed
        (still pending). Asks its writer to publish at once."""
        future = self._waiters.setdefault(write.id, asyncio.get_running_loop().create_future())
        self._writer(write.collection).wake(urgent=True)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            pass
        finally:
            self._waiters.pop(write.id, None)
        return await self.status(write.collection, write.id)

    async def status(self, collection: str, write_id: str) -> WriteStatus:
        """Raises: NotFound for an unknown write (or one of another collection)."""
        found = await asyncio.to_thread(self.journal.status, collection, write_id)
        if found is None:
            raise NotFound(
                f"no write {write_id!r} in collection {collection!r} (statuses are kept "
                f"{self.options.status_ttl_s:g} s)",
                field="write_id",
            )
        return found

    async def document(self, collection: str, doc_id: str) -> DocumentView:
        """Document `doc_id` as writes left it: the pending version, else the searchable one.

        Raises:
            NotFound: no such collection or document, or its deletion was acknowledged.
        """
        touch = await asyncio.to_thread(self.journal.latest_touch, collection, doc_id)
        if touch is not None and touch.kind is WriteKind.DELETE:
            raise NotFound(
                f"document {doc_id!r} was deleted (write {touch.write_id}, not yet published)",
                field="id",
            )
        if touch is not None:
            return DocumentView(doc_id, False, touch.write_id, None, touch.document, [])
        index = await self.collections.get(collection)
        records = (await index.records([doc_id])).get(doc_id)
        if not records:
            raise NotFound(f"no document {doc_id!r} in collection {collection!r}", field="id")
        return DocumentView(doc_id, True, None, index.generation, None, records)

    async def pending_writes(self, collection: str) -> int:
        """Acknowledged writes of `collection` not searchable yet."""
        return await asyncio.to_thread(self.journal.pending_count, collection)

    # -- collections ------------------------------------------------------------------------

    async def create_collection(self, name: str, model: str | None = None) -> bool:
        """Create `name` for `model` (default: the gateway's embedder, the only model it can
        embed with); True when it was created now, False when it existed with that model.

        Raises:
            Conflict: it exists with another model.
            Conflict: `model` is not the gateway's embedder.
            EmbedderUnavailable: the embedder has not said which model it is yet.
        """
        info = self.embedder.info
        found = await existing_model(self._settings, name)
        wanted = model or (found[0] if found and not self.embedder.ready else info.model_id)
        if found is None and not self.embedder.ready:
            raise EmbedderUnavailable(
                f"the embedder is not ready ({self.embedder.status}): a collection is created "
                "for its model and dimension"
            )
        if found is None and wanted != info.model_id:
            # a well-formed request the gateway's configuration cannot serve: a conflict
            raise Conflict(
                f"this gateway embeds with {info.model_id!r}; a collection of {wanted!r} could "
                "not be written or searched through it",
                field="model",
            )
        model_id, dimension = (wanted, found[1]) if found else (wanted, info.dimension or 0)
        async with self.leases.hold(name):
            opened = self.collections.opened(name)
            if opened is not None:
                try:  # a collection deleted elsewhere is not this one any more
                    await opened.reload()
                except NotFound:
                    await self.collections.forget(name)
            # existing too: this replica's fallback copy of it is created if it has none
            index, created = await create_collection(self._settings, name, model_id, dimension)
            await index.release()
            await self.collections.replace(name, index)
        return created

    async def delete_collection(self, name: str) -> int:
        """Delete collection `name` and fail its pending writes; returns how many failed.

        Raises:
            NotFound: no such collection.
            Conflict: another process is writing it.
        """
        writer = self._writers.pop(name, None)
        if writer is not None:
            await writer.stop()
        async with self.leases.hold(name):
            served = self.collections.opened(name)
            if served is not None:
                await served.release()
            await delete_collection(self._settings, name)
            await self.collections.forget(name)
        failed = await asyncio.to_thread(
            self.journal.fail_collection, name, "the collection was deleted"
        )
        for write_id in failed:
            self.resolve(write_id)
        return len(failed)

    # -- for the collection writers ---------------------------------------------------------

    def _writer(self, collection: str) -> CollectionWriter:
        writer = self._writers.get(collection)
        if writer is None:
            writer = self._writers[collection] = CollectionWriter(self, collection)
        return writer

    def resolve(self, write_id: str) -> None:
        future = self._waiters.pop(write_id, None)
        if future is not None and not future.done():
            future.set_result(None)

    def applied(self, size: int, seconds: float) -> None:
        rate = size / seconds if seconds > 0 else 0.0
        self._bytes_per_s = rate if not self._bytes_per_s else 0.8 * self._bytes_per_s + 0.2 * rate

    def _retry_after(self) -> float:
        excess = self.journal.pending_bytes - self.options.journal_max_bytes // 2
        rate = self._bytes_per_s or 1e6
        return min(60.0, max(1.0, excess / rate))
