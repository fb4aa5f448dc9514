"""The `VectorIndex` seam: ANN search over one collection, plus the writes that feed it.

Writes (`upsert`, `delete`) are staged and become visible to searches only at `publish()`,
which makes a new immutable generation and swaps it in atomically. The generation number is
part of every cache key, so a published change can never be answered from a stale cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from app.types import Document, FloatArray, Hit


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
    def model_id(self) -> str:
        """The embedding model the vectors were made with."""
        ...

    @property
    def dimension(self) -> int: ...

    async def count(self) -> int:
        """Documents in the published generation."""
        ...

    async def search(self, vectors: FloatArray, k: int) -> AnnResult:
        """The `k` nearest documents by inner product for each row of `vectors`, best first.

        Raises:
            IndexUnavailable: the index cannot be searched.
        """
        ...

    async def existing_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        """Content hashes of the staged documents among `ids` (for idempotent re-indexing)."""
        ...

    async def upsert(self, documents: Sequence[Document], vectors: FloatArray) -> None:
        """Stage documents (insert or replace by id); durable when this returns."""
        ...

    async def delete(self, ids: Sequence[str]) -> int:
        """Stage deletions; returns how many of `ids` existed."""
        ...

    async def publish(self) -> int | None:
        """Make staged writes searchable as a new generation; None when nothing changed."""
        ...

    async def reload(self) -> bool:
        """Switch to a generation another process published; True when it changed."""
        ...

    async def close(self) -> None: ...


def content_hash(document: Document) -> str:
    """What decides whether a document must be re-embedded and rewritten."""
    payload = json.dumps(
        [document.title, document.text, document.metadata], sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(payload.encode()).hexdigest()
