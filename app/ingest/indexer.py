"""The indexing core: embed what changed, stage it, publish one generation.

Idempotent by id + content hash: a re-run over the same input embeds nothing and publishes
nothing (an id repeated in the input is indexed from its last occurrence only); a changed
document is re-embedded and replaced, and chunks a shorter new version no longer has are
deleted. Streaming and resumable: the input is read once for its ids, then documents are
read, embedded and committed in batches, so memory grows only with the ids and a killed run
loses at most the two batches in flight (one embedding, one being written); a re-run skips
everything committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from app.index.base import Collection
from app.ingest.chunking import Chunker
from app.models import Embedder, Embeddings
from app.search.calibration import calibrate
from app.types import Document, InputType, Truncate, content_hash


@dataclass
class IndexReport:
    """Counts are of source documents; `records` counts the chunks written."""

    read: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    duplicates: int = 0  # earlier occurrences of an id repeated later in the input: ignored
    records_written: int = 0
    records_removed: int = 0
    seconds: float = 0.0
    generation: int | None = None  # None: nothing changed, nothing published
    calibrated: bool = False  # the fusion weight was measured again for this generation
    dry_run: bool = False

    @property
    def docs_per_s(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Planned:
    """One batch of source documents, diffed against what is staged."""

    to_embed: list[Document]
    stale: list[str]
    size: int  # source documents consumed, the ignored earlier copies of repeated ids included
    vectors: asyncio.Task[Embeddings] | None = None


async def index_documents(
    documents: Iterable[Document],
    index: Collection,
    embedder: Embedder | None,
    *,
    chunker: Chunker | None = None,
    batch_size: int = 256,
    delete: Sequence[str] = (),
    dry_run: bool = False,
    publish: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> IndexReport:
    """Embed and stage every new or changed document, delete `delete` (source document ids),
    then publish one generation (`publish_changes`). With `dry_run`, count what would change
    and write nothing; with `publish=False`, stage only (the gateway's writer publishes at its
    refresh interval). The one path every write takes: `semsearch index` and `semsearch
    delete`, and the documents written over HTTP (`app.ingest.writer`).

    `embedder` may be None only when nothing is to be embedded (deletions): the collection
    then keeps its fusion calibration until the next run that embeds.

    An id repeated anywhere in `documents` is indexed once, from its last occurrence (the
    earlier ones are counted in `report.duplicates`), so a re-run changes nothing. To know
    which occurrence is the last, `documents` is read twice: first for its ids alone (what
    `read_documents` returns reads its file again; a one-shot iterator is kept in memory).
    A bad document thus fails the run before anything is written.

    Batch N+1 is read, chunked and embedded (the model runs on its worker thread) while batch
    N is written, so the model is not idle during staging. Batches are committed in input
    order. Passages are embedded with truncation at the end as a safety net: with a chunker
    they fit the window already.
    """
    report = IndexReport(dry_run=dry_run)
    started = time.perf_counter()
    if isinstance(documents, Iterator):
        documents = list(documents)
    last: dict[str, int] = {}
    for position, doc in enumerate(documents):
        last[doc.id] = position
        report.read += 1
    report.duplicates = report.read - len(last)
    pending: _Planned | None = None
    try:
        for batch, consumed in _batches(documents, last, batch_size):
            planned = await _plan(batch, consumed, index, chunker, report)
            if planned.to_embed and not dry_run:
                if embedder is None:
                    raise ValueError("documents to embed, and no embedder")
                passages = [r.passage for r in planned.to_embed]
                planned.vectors = asyncio.create_task(
                    embedder.embed(passages, InputType.PASSAGE, Truncate.END)
                )
            previous, pending = pending, planned
            if previous is not None:
                await _commit(previous, index, on_batch, dry_run)
        if pending is not None:
            await _commit(pending, index, on_batch, dry_run)
            pending = None
    finally:  # on an error, do not leave the next batch computing in the background
        if pending is not None and pending.vectors is not None:
            pending.vectors.cancel()
    if delete:
        found = await index.children(list(delete))
        report.deleted = len(found)
        doomed = [record for children in found.values() for record in children]
        report.records_removed += len(doomed)
        if doomed and not dry_run:
            await index.delete(doomed)
    if publish and not dry_run:
        changed = bool(report.records_written or report.records_removed)
        report.generation, report.calibrated = await publish_changes(index, embedder, changed)
    report.seconds = time.perf_counter() - started
    return report


async def publish_changes(
    index: Collection, embedder: Embedder | None, changed: bool
) -> tuple[int | None, bool]:
    """Publish what is staged as one generation, with the fusion weight calibrated on it when
    records changed, the generation has a lexical index (a dense-only one fuses nothing) and
    the collection has no weight yet or has doubled or halved since
    (`app.search.calibration`). Returns (the new generation or None when nothing was staged,
    whether it was calibrated now)."""
    calibration = None
    if changed and embedder is not None and index.publishes_lexical:
        calibration = await calibrate(index, embedder)
    return await index.publish(calibration=calibration), calibration is not None


async def _plan(
    batch: list[Document],
    consumed: int,
    index: Collection,
    chunker: Chunker | None,
    report: IndexReport,
) -> _Planned:
    """What of `batch` must be (re-)embedded and which chunks are gone; counts into `report`."""
    known = await index.children([doc.id for doc in batch])
    planned = _Planned([], [], consumed)
    # tokenizing a batch for its chunks takes a while: off the event loop, which in the
    # gateway answers searches meanwhile
    split = (
        await asyncio.to_thread(lambda: [chunker.split(doc) for doc in batch])
        if chunker
        else [[doc] for doc in batch]
    )
    for doc, records in zip(batch, split, strict=True):
        before = known.get(doc.id, {})
        changed = [r for r in records if before.get(r.id) != content_hash(r)]
        gone = [record for record in before if record not in {r.id for r in records}]
        planned.to_embed += changed
        planned.stale += gone
        if not before:
            report.added += 1
        elif changed or gone:
            report.updated += 1
        else:
            report.unchanged += 1
    report.records_written += len(planned.to_embed)
    report.records_removed += len(planned.stale)
    return planned


async def _commit(
    planned: _Planned,
    index: Collection,
    on_batch: Callable[[int], None] | None,
    dry_run: bool,
) -> None:
    """Stage one planned batch: its new vectors, then the removal of its stale chunks."""
    if not dry_run:
        if planned.vectors is not None:
            await index.upsert(planned.to_embed, (await planned.vectors).vectors)
        if planned.stale:
            await index.delete(planned.stale)
    if on_batch is not None:
        on_batch(planned.size)


def _batches(
    documents: Iterable[Document], last: dict[str, int], size: int
) -> Iterator[tuple[list[Document], int]]:
    """Batches of up to `size` documents, each the last occurrence of its id (`last`: id ->
    position), with how many source documents each consumed."""
    batch: list[Document] = []
    consumed = 0
    for position, doc in enumerate(documents):
        consumed += 1
        if last.get(doc.id) == position:
            batch.append(doc)
            if len(batch) == size:
                yield batch, consumed
                batch, consumed = [], 0
    if consumed:
        yield batch, consumed
