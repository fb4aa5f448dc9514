"""The index seams: `VectorIndex` (ANN search over one collection, plus the writes that feed
it), `LexicalIndex` (BM25 over the same passages) and `Collection` (both, published together).

Writes (`upsert`, `delete`) are staged and become visible to searches only at `publish()`,
which makes a new immutable generation and swaps it in atomically. The generation number is
part of every cache key, so a published change can never be answered from a stale cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from app.errors import InvalidInput
from app.types import Calibration, Document, Filter, FloatArray, Hit


@dataclass(frozen=True)
class CollectionStats:
    """What the published generation of a collection holds (`GET /v1/collections/{name}`)."""

    documents: int  # source documents
    records: int  # what is searched: documents, or their chunks
    published_at: float | None  # when the generation was published (None: never, or unknown)


@dataclass(frozen=True)
class AnnResult:
    """Hits per query vector, best first, and which index answered."""

    hits: list[list[Hit]]
    backend: str
    generation: int
    degraded: bool = False  # answered by a fallback index because the primary failed


@runtime_checkable
class VectorIndex(Protocol):
    """One collection: search the published generation; stage writes; publish them."""

    @property
    def backend(self) -> str: ...

    @property
    def collection(self) -> str: ...

    @property
    def generation(self) -> int:
        """Number of the generation searches see; 0 before the first publish."""
        ...

    @property
    def uid(self) -> str:
        """The collection's identity: a collection deleted and created again under the same
        name has another, so caches and gateways never mistake one for the other."""
        ...

    @property
    def model_id(self) -> str:
        """The embedding model the vectors were made with."""
        ...

    @property
    def dimension(self) -> int: ...

    async def count(self) -> int:
        """Documents in the published generation."""
        ...

    async def search(self, vectors: FloatArray, k: int, filter: Filter | None = None) -> AnnResult:
        """The `k` nearest documents by inner product for each row of `vectors`, best first,
        among those whose metadata matches `filter` (k results whenever k match).

        Raises:
            IndexUnavailable: the index cannot be searched.
        """
        ...

    async def exact_ids(self, vectors: FloatArray, k: int) -> list[list[str]]:
        """Record ids of the exact top-`k` for each row of `vectors` (brute force): the
        reference ANN recall is measured against (`semsearch eval`).

        Raises:
            IndexUnavailable: the index cannot be searched.
        """
        ...

    async def children(self, parents: Sequence[str]) -> dict[str, dict[str, str]]:
        """For each of `parents` that has staged records: {record id: content hash}.

        What re-indexing compares against: unchanged records are skipped, changed ones
        replaced, and chunks a shorter new version no longer has are deleted.
        """
        ...

    async def upsert(self, documents: Sequence[Document], vectors: FloatArray) -> None:
        """Stage documents (insert or replace by id); durable when this returns."""
        ...

    async def delete(self, ids: Sequence[str]) -> int:
        """Stage deletions; returns how many of `ids` existed."""
        ...

    async def publish(self, rebuild: bool = False) -> int | None:
        """Make staged writes searchable as a new generation; None when nothing changed.
        `rebuild`: a new generation even with nothing staged, every derived index rebuilt
        from what is stored (how a collection from before lexical search gets its lexical
        index, with nothing re-embedded)."""
        ...

    async def reload(self) -> bool:
        """Switch to a generation another process published; True when it changed.

        Raises:
            NotFound: the collection was deleted, or deleted and created again (another
                identity): the caller drops this one and opens the collection anew.
        """
        ...

    async def records(self, parents: Sequence[str]) -> dict[str, list[Document]]:
        """The records (chunks in order) of each of `parents` in the published generation."""
        ...

    async def stats(self) -> CollectionStats: ...

    async def release(self) -> None:
        """Let other writers in: end this writer's hold on the collection (its lock), keeping
        it open for searches. The next write takes it again."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class LexicalIndex(Protocol):
    """BM25 over the same passages the vectors were made from, in the same generations."""

    @property
    def has_lexical(self) -> bool:
        """False for a collection indexed before lexical search existed: dense only."""
        ...

    async def lexical_search(
        self, texts: Sequence[str], k: int, filter: Filter | None = None
    ) -> AnnResult:
        """The `k` best passages by BM25 for each of `texts`, best first, among those whose
        metadata matches `filter`; a hit's score is its BM25 score. A text with no indexed
        term finds nothing.

        Raises:
            IndexUnavailable: the lexical index cannot be searched (or there is none).
        """
        ...


@runtime_checkable
class Collection(VectorIndex, LexicalIndex, Protocol):
    """What a gateway searches and the indexer writes: one collection's vectors and words,
    published together as generations."""

    @property
    def calibration(self) -> Calibration | None:
        """The fusion weight chosen when the published generation was made; None for a
        collection published before calibration existed."""
        ...

    @property
    def publishes_lexical(self) -> bool:
        """Whether the next generation published (not rebuilt) has a lexical index: only then
        is a fusion weight worth calibrating."""
        ...

    async def sample(self, n: int, seed: int = 0) -> list[tuple[Document, FloatArray]]:
        """Up to `n` staged records at random, with their vectors (what calibration uses)."""
        ...

    async def publish(
        self, rebuild: bool = False, calibration: Calibration | None = None
    ) -> int | None:
        """As `VectorIndex.publish`, with the calibration made for the new generation."""
        ...


def check_dimension(vectors: FloatArray, dimension: int, collection: str) -> None:
    """Query vectors must match the collection's; a mismatch is a clear error, not a crash."""
    if vectors.ndim != 2 or vectors.shape[1] != dimension:
        raise InvalidInput(
            f"query vectors are {vectors.shape[-1]}-d; collection {collection!r} holds "
            f"{dimension}-d vectors"
        )
