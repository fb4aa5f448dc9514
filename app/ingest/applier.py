"""One collection's writer: applies its pending writes, in order, through the indexing core,
and publishes them at the refresh interval (see `app.ingest.writer` for the whole path)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from typing import TYPE_CHECKING

from app import metrics
from app.errors import EmbedderUnavailable, InvalidInput, NotFound, SemsearchError
from app.index.base import Collection
from app.ingest.chunking import Chunker
from app.ingest.indexer import index_documents, publish_changes
from app.ingest.journal import JournaledWrite, WriteKind, WriteState
from app.logs import get_logger
from app.models.priority import Priority, work_priority

if TYPE_CHECKING:
    from app.ingest.writer import Writes

log = get_logger(__name__)

# Documents (or ids) applied per cycle: a long backlog becomes searchable in steps (a cycle
# is some seconds of embedding on a CPU), not at its end.
APPLY_MAX_ITEMS = 512
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0


class CollectionWriter:
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

    @property
    def unpublished(self) -> bool:
        """Writes are staged here and not yet published."""
        return bool(self._unpublished)

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
        drained = sum(len(w.documents) + len(w.ids) for w in writes) < APPLY_MAX_ITEMS
        due = time.monotonic() - self._last_publish >= owner.options.refresh_interval_s
        if self._unpublished and (due or self._urgent):
            await self._publish(calibrate=drained)
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
            # staged here, never published: failed above with the rest (were they kept, the
            # loop would try to publish them at once, again and again)
            self._unpublished = []
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
        owner.applied(sum(w.bytes for w in writes), time.perf_counter() - started)

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

    async def _publish(self, calibrate: bool) -> None:
        """Publish what is staged. The fusion weight is measured again (when the collection
        grew or shrank enough) only with `calibrate`: once a backlog is drained, not at each
        of its steps, for it embeds some hundreds of pseudo-queries."""
        owner = self._owner
        async with owner.leases.hold(self.name):
            # caught up first: another writer (a replica, the CLI) may have published what
            # was staged here, and then this publish has nothing new (None)
            index = await self._current()
            if index is None:
                return
            try:
                embedder = owner.embedder if calibrate and owner.embedder.ready else None
                generation, _ = await publish_changes(index, embedder, self._changed)
            finally:
                await index.release()
        # None: nothing new was staged, e.g. another writer published it meanwhile
        published = generation if generation is not None else index.generation
        writes, self._unpublished = self._unpublished, []
        await asyncio.to_thread(owner.journal.finish, writes, WriteState.SEARCHABLE, published)
        for write in writes:
            owner.resolve(write.id)
            metrics.WRITES.labels(write.kind.value, "searchable").inc()
        if embedder is not None:
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
            self._owner.resolve(write.id)
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
