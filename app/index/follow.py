"""Keeping a replica's FAISS fallback copy current with the Qdrant primary.

With several gateway replicas, each has a fallback copy on its own disk, and each writes its
own writes into it; the writes other replicas applied reach it only through Qdrant. Following
diffs the copy against the primary's published generation (content hash by record id, as
indexing does), fetches the records it lacks or holds in another version (with their vectors:
nothing is embedded again), drops those the primary no longer has, and publishes the copy.
It reads every id of the collection, so replicas do it at most every
`SEMSEARCH_FALLBACK_SYNC_INTERVAL_S`, and only when the primary published since.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.index.faiss.index import FaissIndex
from app.index.fallback import FallbackIndex
from app.index.qdrant.index import QdrantIndex
from app.logs import get_logger

log = get_logger(__name__)

_FETCH = 1024  # records fetched from Qdrant and staged at a time


@dataclass(frozen=True)
class Followed:
    generation: int  # the primary's generation the copy now holds
    copied: int
    removed: int


def followable(index: object) -> bool:
    """A Qdrant primary with a FAISS fallback copy."""
    return (
        isinstance(index, FallbackIndex)
        and isinstance(index.primary, QdrantIndex)
        and isinstance(index.fallback, FaissIndex)
    )


async def follow(index: FallbackIndex) -> Followed:
    """Make `index`'s fallback copy hold what its primary's published generation holds. The
    caller keeps this process's writer out meanwhile, and releases the copy after."""
    primary, copy = index.primary, index.fallback
    assert isinstance(primary, QdrantIndex) and isinstance(copy, FaissIndex)
    generation = primary.generation
    wanted = await primary.published_hashes()
    have = await copy.staged_hashes()
    missing = [record for record, digest in wanted.items() if have.get(record) != digest]
    gone = [record for record in have if record not in wanted]
    for start in range(0, len(missing), _FETCH):
        records = await primary.published_records(missing[start : start + _FETCH])
        if records:
            vectors = np.stack([vector for _, vector in records]).astype(np.float32)
            await copy.upsert([doc for doc, _ in records], vectors)
    if gone:
        await copy.delete(gone)
    if missing or gone:
        await copy.publish(calibration=primary.calibration)
        log.info(
            "fallback_followed",
            collection=index.collection,
            generation=generation,
            copied=len(missing),
            removed=len(gone),
        )
    return Followed(generation, len(missing), len(gone))
