"""FallbackIndex: search the primary; when it fails (or its breaker is open), the fallback.

Compose: Qdrant primary, FAISS fallback. GPU machine: FAISS on the GPU, FAISS on the CPU.
Writes go to both, so either can serve; a document counts as indexed only when both agree.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.errors import IndexUnavailable, InvalidInput, SemsearchError
from app.index import AnnResult, VectorIndex
from app.logs import get_logger
from app.resilience import CircuitBreaker
from app.types import Document, Filter, FloatArray

log = get_logger(__name__)


class FallbackIndex:
    """A `VectorIndex` made of a primary and a fallback holding the same collection."""

    def __init__(
        self, primary: VectorIndex, fallback: VectorIndex, breaker: CircuitBreaker
    ) -> None:
        if primary.model_id != fallback.model_id or primary.dimension != fallback.dimension:
            raise SemsearchError(
                f"the fallback copy of {primary.collection!r} holds vectors of "
                f"{fallback.model_id!r}, the primary of {primary.model_id!r}"
            )
        self.primary = primary
        self.fallback = fallback
        self.breaker = breaker

    @property
    def backend(self) -> str:
        return self.primary.backend

    @property
    def collection(self) -> str:
        return self.primary.collection

    @property
    def generation(self) -> int:
        return self.primary.generation

    @property
    def model_id(self) -> str:
        return self.primary.model_id

    @property
    def dimension(self) -> int:
        return self.primary.dimension

    async def count(self) -> int:
        try:
            return await self.primary.count()
        except IndexUnavailable:
            return await self.fallback.count()

    async def search(self, vectors: FloatArray, k: int, filter: Filter | None = None) -> AnnResult:
        try:
            return await self.breaker.call(lambda: self.primary.search(vectors, k, filter))
        except InvalidInput:
            raise
        except Exception as exc:
            reason = exc.message if isinstance(exc, SemsearchError) else repr(exc)
            log.warning("index_fallback", collection=self.collection, reason=reason)
        try:
            result = await self.fallback.search(vectors, k, filter)
        except Exception as exc:
            raise IndexUnavailable(
                f"neither the primary nor the fallback index of {self.collection!r} answered: "
                f"{exc!r}"
            ) from exc
        return AnnResult(result.hits, result.backend, result.generation, degraded=True)

    async def children(self, parents: Sequence[str]) -> dict[str, dict[str, str]]:
        """Records count as present only where both copies agree (so a record one copy missed
        is written again); records either copy holds are listed, so stale ones get deleted."""
        primary = await self.primary.children(parents)
        fallback = await self.fallback.children(parents)
        merged: dict[str, dict[str, str]] = {}
        for parent in primary.keys() | fallback.keys():
            mine, theirs = primary.get(parent, {}), fallback.get(parent, {})
            merged[parent] = {
                record: (digest if theirs.get(record) == digest else "")
                for record, digest in {**theirs, **mine}.items()
            }
        return merged

    async def upsert(self, documents: Sequence[Document], vectors: FloatArray) -> None:
        await self.primary.upsert(documents, vectors)
        await self.fallback.upsert(documents, vectors)

    async def delete(self, ids: Sequence[str]) -> int:
        deleted = await self.primary.delete(ids)
        await self.fallback.delete(ids)
        return deleted

    async def publish(self) -> int | None:
        generation = await self.primary.publish()
        fallback = await self.fallback.publish()
        return generation if generation is not None else fallback

    async def reload(self) -> bool:
        """Each copy separately: a primary that is down must not keep the fallback stale."""
        try:
            primary = await self.primary.reload()
        except IndexUnavailable as exc:
            log.warning("primary_reload_failed", collection=self.collection, reason=exc.message)
            primary = False
        fallback = await self.fallback.reload()
        return primary or fallback

    async def close(self) -> None:
        await self.primary.close()
        await self.fallback.close()
