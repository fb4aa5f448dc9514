"""Which model work goes first: a person waiting for a search, or documents being indexed.

A search's query embedding is interactive; passages embedded for writes (`app.ingest.writer`)
are bulk. The batch queue (`app.models.batching`) cuts each batch from one class: the
interactive one, except that when both wait they take turns batch by batch (steady searches
must not starve indexing). So a query waits behind no queued passages, only behind at most one
bulk batch, which is kept short for that reason (BULK_BATCH_S), while indexing keeps at least
half of the batches when both are busy. The class travels in a context variable within a
process and as the `x-semsearch-priority` header to a model service.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from enum import IntEnum


class Priority(IntEnum):
    """Lower goes first."""

    INTERACTIVE = 0
    BULK = 1


PRIORITY_HEADER = "x-semsearch-priority"
# A bulk batch gets at most this share of the padded-token budget, and, while searches are
# coming (one in the last QUERIES_RECENT_S), no more tokens than its measured cost fits in
# BULK_BATCH_S (at least one item): a query that arrives while one computes waits that long
# at most. On a GPU the share binds (batches take milliseconds); on this 2-core CPU the time
# does: one 256-token passage takes ~80 ms, four ~260 ms. With no searches coming, nobody
# waits, and passages go four at a time, which is faster on a CPU (15/s against 12/s one by
# one, measured here).
BULK_BATCH_SHARE = 4
BULK_BATCH_S = 0.1
QUERIES_RECENT_S = 2.0

work_priority: ContextVar[Priority] = ContextVar("work_priority", default=Priority.INTERACTIVE)


@contextmanager
def bulk_work() -> Iterator[None]:
    """Model calls made in this block (and in tasks started from it) go behind searches."""
    token = work_priority.set(Priority.BULK)
    try:
        yield
    finally:
        work_priority.reset(token)


def priority_from_header(value: str | None) -> Priority:
    return Priority.BULK if (value or "").strip().lower() == "bulk" else Priority.INTERACTIVE
