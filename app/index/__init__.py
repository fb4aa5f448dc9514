"""The `VectorIndex` seam: ANN search over one collection, plus the writes that feed it.

Writes (`upsert`, `delete`) are staged and become visible to searches only at `publish()`,
which makes a new immutable generation and swaps it in atomically. The generation number is
part of every cache key, so a published change can never be answered from a stale cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from app.errors import InvalidInput
from app.types import Document, Filter, FloatArray, Hit, lone_surrogate_at


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

    async def search(self, vectors: FloatArray, k: int, filter: Filter | None = None) -> AnnResult:
        """The `k` nearest documents by inner product for each row of `vectors`, best first,
        among those whose metadata matches `filter` (k results whenever k match).

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


# Top-level metadata fields only: no dots, which Qdrant reads as a path into nested objects
# and SQLite's JSON functions would read as a literal key -- the backends would disagree.
FILTER_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
MAX_FILTER_CONDITIONS = 16
MAX_FILTER_VALUES = 1024


def validate_filter(raw: object) -> Filter | None:
    """A metadata filter: {field: value} for equality, {field: [values]} for "any of".

    Raises:
        InvalidInput: not that shape, a bad field name, or too many conditions or values.
    """
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise InvalidInput("filter must be a non-empty object of field: value", field="filter")
    if len(raw) > MAX_FILTER_CONDITIONS:
        raise InvalidInput(f"at most {MAX_FILTER_CONDITIONS} filter conditions", field="filter")
    for key, value in raw.items():
        if not isinstance(key, str) or not FILTER_KEY.fullmatch(key):
            raise InvalidInput(
                f"filter field {key!r} is not a top-level metadata name (letters, digits, _ "
                "and -; nested fields cannot be filtered on)",
                field="filter",
            )
        values = value if isinstance(value, list) else [value]
        if not values or len(values) > MAX_FILTER_VALUES:
            raise InvalidInput(
                f"filter.{key} needs 1 to {MAX_FILTER_VALUES} values", field=f"filter.{key}"
            )
        if not all(_filter_value(v) for v in values):
            raise InvalidInput(
                f"filter.{key} values must be strings, booleans, 64-bit integers or finite numbers",
                field=f"filter.{key}",
            )
    return raw


def _filter_value(value: object) -> bool:
    """A value both backends can store and compare: SQLite and Qdrant hold 64-bit integers,
    JSON parsers let NaN and lone surrogates through."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return lone_surrogate_at(value) is None
    return False


def check_dimension(vectors: FloatArray, dimension: int, collection: str) -> None:
    """Query vectors must match the collection's; a mismatch is a clear error, not a crash."""
    if vectors.ndim != 2 or vectors.shape[1] != dimension:
        raise InvalidInput(
            f"query vectors are {vectors.shape[-1]}-d; collection {collection!r} holds "
            f"{dimension}-d vectors"
        )
