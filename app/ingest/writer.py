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
import contextvars
import time
from collections.abc import Sequence
from dataclasses import dataclass

from app import metrics
from app.config import GatewaySettings
from app.errors import (
    Conflict,
    EmbedderUnavailable,
    InvalidInput,
    NotFound,
    Overloaded,
    SemsearchError,
)
from app.index.base import Collection
from app.index.collections import Collections
from app.index.manage import create_collection, delete_collection, existing_model
from app.ingest.chunking import Chunker
from app.ingest.indexer import index_documents, publish_changes
from app.ingest.journal import JournaledWrite, WriteJournal, WriteKind, WriteState, WriteStatus
from app.ingest.lease import WriterLeases
from app.logs import get_logger
from app.models import Embedder
from app.models.priority import Priority, work_priority
from app.types import Document

log = get_logger(__name__)

# Documents (or ids) applied per cycle: a long backlog is published in steps, not at its end.
APPLY_MAX_ITEMS = 2048
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0


@dataclass(frozen=True)
class WriterOptions:
    refresh_interval_s: float
    batch_size: int
    journal_max_bytes: int
    status_ttl_s: float
    drain_s: float

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> WriterOptions:
        return cls(
            refresh_interval_s=settings.refresh_interval_s,
            batch_size=settings.index_batch_size,
            journal_max_bytes=settings.write_journal_max_bytes,
            status_ttl_s=settings.write_status_ttl_s,
            drain_s=settings.write_drain_s,
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
        self._writers: dict[str, _CollectionWriter] = {}
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._bytes_per_s = 0.0  # smoothed apply rate, for Retry-After

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
        """Apply what a previous run acknowledged and did not make searchable."""
        await asyncio.to_thread(self.journal.prune, self.options.status_ttl_s)
        for name in await asyncio.to_thread(self.journal.pending_collections):
            log.info("resuming_writes", collection=name)
            self._writer(name).wake()

    async def stop(self) -> None:
        """Apply and publish what was acknowledged, for up to `drain_s` (what is left stays
        journaled for the next start), then stop."""
        await self._drain(self.options.drain_s)
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
        if found is not None and found[0] == wanted:
            await self.collections.get(name)  # served from now on
            return False
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
            index, created = await create_collection(self._settings, name, model_id, dimension)
            await index.release()
            if self.collections.opened(name) is None:
                self.collections.add(name, index)
            else:
                await index.close()  # already served: keep that instance
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
            self._resolve(write_id)
        return len(failed)

    # -- for the collection writers ---------------------------------------------------------

    def _writer(self, collection: str) -> _CollectionWriter:
        writer = self._writers.get(collection)
        if writer is None:
            writer = self._writers[collection] = _CollectionWriter(self, collection)
        return writer

    def _resolve(self, write_id: str) -> None:
        future = self._waiters.pop(write_id, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _applied(self, size: int, seconds: float) -> None:
        rate = size / seconds if seconds > 0 else 0.0
        self._bytes_per_s = rate if not self._bytes_per_s else 0.8 * self._bytes_per_s + 0.2 * rate

    def _retry_after(self) -> float:
        excess = self.journal.pending_bytes - self.options.journal_max_bytes // 2
        rate = self._bytes_per_s or 1e6
        return min(60.0, max(1.0, excess / rate))


class _CollectionWriter:
    """Applies one collection's pending writes in order and publishes them."""

    def __init__(self, owner: Writes, name: str) -> None:
        self._owner = owner
        self.name = name
        self._wakeup = asyncio.Event()
        self._urgent = False
        self._applied_seq = 0  # writes up to here are staged
        self._unpublished: list[JournaledWrite] = []
        self._changed = False  # records were written or removed since the last publish
        self._last_publish = 0.0
        self._chunker: Chunker | None = None
        # A context of its own: no request's id in its logs, and its model calls go behind
        # searches (app.models.priority).
        context = contextvars.Context()
        context.run(work_priority.set, Priority.BULK)
        self._task = asyncio.create_task(self._run(), name=f"writer-{name}", context=context)

    def wake(self, urgent: bool = False) -> None:
        self._urgent = self._urgent or urgent
        self._wakeup.set()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            timeout = None
            if self._unpublished:
                timeout = max(
                    0.0,
                    self._last_publish + self._owner.options.refresh_interval_s - time.monotonic(),
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            self._wakeup.clear()
            try:
                more = await self._cycle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # embedder down, another writer, Qdrant away: later
                reason = exc.message if isinstance(exc, SemsearchError) else repr(exc)
                log.warning(
                    "writes_postponed", collection=self.name, reason=reason, retry_in_s=delay
                )
                metrics.WRITES.labels("any", "postponed").inc()
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_S)
                self._wakeup.set()
                continue
            delay = RETRY_FIRST_S
            if more:
                self._wakeup.set()

    async def _cycle(self) -> bool:
        """Apply what is pending (up to APPLY_MAX_ITEMS), publish if due; True when more
        is pending."""
        owner = self._owner
        writes = await asyncio.to_thread(
            owner.journal.pending, self.name, self._applied_seq, APPLY_MAX_ITEMS
        )
        if writes:
            await self._apply(writes)
        due = time.monotonic() - self._last_publish >= owner.options.refresh_interval_s
        if self._unpublished and (due or self._urgent):
            await self._publish()
        return bool(writes)

    async def _collection(self) -> Collection | None:
        """The served collection, or None when it is gone (its writes are then failed)."""
        try:
            return await self._owner.collections.get(self.name)
        except NotFound:
            await self._fail(
                await asyncio.to_thread(self._owner.journal.pending, self.name),
                "the collection was deleted",
            )
            return None

    async def _current(self) -> Collection | None:
        """The served collection, caught up with what another writer published (writes are
        staged as the generation after the current one); None when it is gone."""
        index = await self._collection()
        if index is None:
            return None
        try:
            await index.reload()
        except NotFound:  # deleted, or deleted and created again: open what has the name now
            await self._owner.collections.forget(self.name)
            return await self._collection()
        return index

    async def _apply(self, writes: list[JournaledWrite]) -> None:
        owner = self._owner
        started = time.perf_counter()
        async with owner.leases.hold(self.name):
            index = await self._current()
            if index is None:
                return
            try:
                stale = [w for w in writes if w.uid != index.uid]
                await self._fail(
                    stale,
                    "the collection was deleted (and created again) after this write was "
                    "acknowledged",
                )
                live = [w for w in writes if w.uid == index.uid]
                staged: list[JournaledWrite] = []
                for run in _runs(live):
                    staged += await self._stage(index, run)
                # only now: after a failure the whole lot is applied again (idempotent)
                self._unpublished += staged
            finally:
                await index.release()
        self._applied_seq = writes[-1].seq
        owner._applied(sum(w.bytes for w in writes), time.perf_counter() - started)

    async def _stage(self, index: Collection, run: list[JournaledWrite]) -> list[JournaledWrite]:
        """Stage a run of writes of one kind; a write that can never be applied is failed
        alone (the others of its run are staged). Returns the writes staged."""
        try:
            await self._stage_together(index, run)
            return run
        except InvalidInput as exc:
            if len(run) == 1:
                await self._fail(run, exc.message)
                return []
        staged = []
        for write in run:
            try:
                await self._stage_together(index, [write])
                staged.append(write)
            except InvalidInput as exc:
                await self._fail([write], exc.message)
        return staged

    async def _stage_together(self, index: Collection, run: list[JournaledWrite]) -> None:
        owner = self._owner
        if run[0].kind is WriteKind.DELETE:
            report = await index_documents(
                [], index, None, delete=[i for w in run for i in w.ids], publish=False
            )
        else:
            embedder = owner.embedder
            if not embedder.ready:
                raise EmbedderUnavailable(f"the embedder is not ready ({embedder.status})")
            if index.model_id != embedder.info.model_id:
                raise InvalidInput(
                    f"collection {self.name!r} holds vectors of {index.model_id!r}; this "
                    f"gateway embeds with {embedder.info.model_id!r}"
                )
            if self._chunker is None:
                self._chunker = await asyncio.to_thread(Chunker.for_model, embedder.info)
            report = await index_documents(
                [doc for w in run for doc in w.documents],
                index,
                embedder,
                chunker=self._chunker,
                batch_size=owner.options.batch_size,
                publish=False,
            )
        self._changed = self._changed or bool(report.records_written or report.records_removed)
        for write in run:
            metrics.WRITES.labels(write.kind.value, "applied").inc()

    async def _publish(self) -> None:
        owner = self._owner
        async with owner.leases.hold(self.name):
            index = await self._collection()
            if index is None:
                return
            try:
                embedder = owner.embedder if owner.embedder.ready else None
                generation, _ = await publish_changes(index, embedder, self._changed)
            finally:
                await index.release()
        # None: nothing new was staged, e.g. another writer published it meanwhile
        published = generation if generation is not None else index.generation
        writes, self._unpublished = self._unpublished, []
        await asyncio.to_thread(owner.journal.finish, writes, WriteState.SEARCHABLE, published)
        for write in writes:
            owner._resolve(write.id)
            metrics.WRITES.labels(write.kind.value, "searchable").inc()
        self._changed = False
        self._urgent = False
        self._last_publish = time.monotonic()
        metrics.INDEX_GENERATION.labels(self.name).set(index.generation)
        log.info("writes_published", collection=self.name, writes=len(writes), generation=published)

    async def _fail(self, writes: list[JournaledWrite], reason: str) -> None:
        if not writes:
            return
        await asyncio.to_thread(self._owner.journal.finish, writes, WriteState.FAILED, None, reason)
        for write in writes:
            self._owner._resolve(write.id)
            metrics.WRITES.labels(write.kind.value, "failed").inc()
        log.warning("writes_failed", collection=self.name, writes=len(writes), reason=reason)


def _runs(writes: list[JournaledWrite]) -> list[list[JournaledWrite]]:
    """Consecutive writes of the same kind, in order: applied together, as one input (the
    last occurrence of an id wins), while a delete after an upsert (or the reverse) keeps its
    place."""
    runs: list[list[JournaledWrite]] = []
    for write in writes:
        if runs and runs[-1][0].kind is write.kind:
            runs[-1].append(write)
        else:
            runs.append([write])
    return runs
