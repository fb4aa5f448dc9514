"""FallbackIndex: search the primary; when it fails, hangs, or its breaker is open, the fallback.

Compose: Qdrant primary, FAISS fallback. GPU machine: FAISS on the GPU, FAISS on the CPU.
Writes go to both, so either can serve; a document counts as indexed only when both agree.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from app.breaker import CircuitBreaker
from app.errors import IndexUnavailable, InvalidInput, SemsearchError
from app.index.base import AnnResult, Collection, CollectionStats
from app.logs import get_logger
from app.types import Calibration, Document, Filter, FloatArray

log = get_logger(__name__)


class UnopenedIndex:
    """The primary of a collection that could not be opened when the gateway did (Qdrant not
    answering, a generation that fails to load). Its searches fail, so the fallback copy
    answers, flagged degraded; `FallbackIndex.reload` keeps trying `open` and swaps in the
    real index once it works."""

    def __init__(
        self,
        backend: str,
        like: Collection,
        reason: str,
        opener: Callable[[], Awaitable[Collection]],
    ) -> None:
        self.backend = backend
        self.collection = like.collection
        self.model_id = like.model_id
        self.dimension = like.dimension
        self.uid = like.uid
        self.generation = 0
        self.calibration = like.calibration
        self.publishes_lexical = like.publishes_lexical
        self.reason = reason
        self.open = opener

    def _unavailable(self) -> IndexUnavailable:
        return IndexUnavailable(f"the {self.backend} index could not be opened: {self.reason}")

    async def count(self) -> int:
        raise self._unavailable()

    async def search(self, vectors: FloatArray, k: int, filter: Filter | None = None) -> AnnResult:
        raise self._unavailable()

    async def exact_ids(self, vectors: FloatArray, k: int) -> list[list[str]]:
        raise self._unavailable()

    async def children(self, parents: Sequence[str]) -> dict[str, dict[str, str]]:
        raise self._unavailable()

    async def upsert(self, documents: Sequence[Document], vectors: FloatArray) -> None:
        raise self._unavailable()

    async def delete(self, ids: Sequence[str]) -> int:
        raise self._unavailable()

    @property
    def has_lexical(self) -> bool:
        return True  # unknown until it opens: its searches fail over to the fallback copy

    async def lexical_search(
        self, texts: Sequence[str], k: int, filter: Filter | None = None
    ) -> AnnResult:
        raise self._unavailable()

    async def sample(self, n: int, seed: int = 0) -> list[tuple[Document, FloatArray]]:
        raise self._unavailable()

    async def publish(
        self, rebuild: bool = False, calibration: Calibration | None = None
    ) -> int | None:
        raise self._unavailable()

    async def reload(self) -> bool:
        return False  # FallbackIndex.reload opens it

    async def records(self, parents: Sequence[str]) -> dict[str, list[Document]]:
        raise self._unavailable()

    async def stats(self) -> CollectionStats:
        raise self._unavailable()

    async def release(self) -> None:
        return None

    async def close(self) -> None:
        return None


class FallbackIndex:
    """A `Collection` made of a primary and a fallback copy of it."""

    def __init__(
        self,
        primary: Collection,
        fallback: Collection,
        breaker: CircuitBreaker,
        primary_timeout_s: float | None = None,
    ) -> None:
        if primary.model_id != fallback.model_id or primary.dimension != fallback.dimension:
            raise SemsearchError(
                f"the fallback copy of {primary.collection!r} holds vectors of "
                f"{fallback.model_id!r}, the primary of {primary.model_id!r}"
            )
        self.primary = primary
        self.fallback = fallback
        self.breaker = breaker
        # A primary that hangs (Qdrant stopped, a network partition) must fail over while the
        # request still has time for the fallback, not after the stage's whole timeout.
        self.primary_timeout_s = primary_timeout_s

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
    def uid(self) -> str:
        return self.primary.uid

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
            return await self.breaker.call(
                lambda: self._within(self.primary.search(vectors, k, filter))
            )
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

    @property
    def has_lexical(self) -> bool:
        return self.primary.has_lexical or self.fallback.has_lexical

    async def lexical_search(
        self, texts: Sequence[str], k: int, filter: Filter | None = None
    ) -> AnnResult:
        """The primary's when it answers in time, else the fallback's (flagged degraded). A
        primary without a lexical index (written before it existed) leaves it to the
        fallback copy for good, which is no failure."""
        if not self.primary.has_lexical:
            return await self.fallback.lexical_search(texts, k, filter)
        try:
            return await self.breaker.call(
                lambda: self._within(self.primary.lexical_search(texts, k, filter))
            )
        except InvalidInput:
            raise
        except Exception as exc:
            reason = exc.message if isinstance(exc, SemsearchError) else repr(exc)
            log.warning("lexical_fallback", collection=self.collection, reason=reason)
        try:
            result = await self.fallback.lexical_search(texts, k, filter)
        except Exception as exc:
            raise IndexUnavailable(
                f"neither copy of {self.collection!r} answered a lexical search: {exc!r}"
            ) from exc
        return AnnResult(result.hits, result.backend, result.generation, degraded=True)

    async def _within(self, work: Awaitable[AnnResult]) -> AnnResult:
        if self.primary_timeout_s is None:
            return await work
        try:
            return await asyncio.wait_for(work, self.primary_timeout_s)
        except TimeoutError:
            raise IndexUnavailable(
                f"the primary index did not answer within {self.primary_timeout_s:.2f}s"
            ) from None

    async def exact_ids(self, vectors: FloatArray, k: int) -> list[list[str]]:
        """The primary's exact top-k: ANN recall is measured for the index searches go to."""
        return await self.primary.exact_ids(vectors, k)

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

    @property
    def publishes_lexical(self) -> bool:
        return self.primary.publishes_lexical or self.fallback.publishes_lexical

    @property
    def calibration(self) -> Calibration | None:
        return self.primary.calibration or self.fallback.calibration

    async def sample(self, n: int, seed: int = 0) -> list[tuple[Document, FloatArray]]:
        return await self.primary.sample(n, seed)

    async def publish(
        self, rebuild: bool = False, calibration: Calibration | None = None
    ) -> int | None:
        generation = await self.primary.publish(rebuild, calibration)
        fallback = await self.fallback.publish(rebuild, calibration)
        return generation if generation is not None else fallback

    async def reload(self) -> bool:
        """Each copy separately: a primary that is down must not keep the fallback stale."""
        try:
            if isinstance(self.primary, UnopenedIndex):
                primary = await self._open_primary(self.primary)
            else:
                primary = await self.primary.reload()
        except IndexUnavailable as exc:
            log.warning("primary_reload_failed", collection=self.collection, reason=exc.message)
            primary = False
        fallback = await self.fallback.reload()
        return primary or fallback

    async def _open_primary(self, unopened: UnopenedIndex) -> bool:
        try:
            opened = await unopened.open()
        except Exception as exc:
            reason = exc.message if isinstance(exc, SemsearchError) else repr(exc)
            log.debug("primary_still_unopened", collection=self.collection, reason=reason)
            return False
        if (opened.model_id, opened.dimension) != (self.model_id, self.dimension):
            await opened.close()
            raise InvalidInput(
                f"the primary index of {self.collection!r} holds vectors of "
                f"{opened.model_id!r}, its fallback copy of {self.model_id!r}",
                field="collection",
            )
        self.primary = opened
        log.info("primary_index_opened", collection=self.collection, generation=opened.generation)
        return True

    async def records(self, parents: Sequence[str]) -> dict[str, list[Document]]:
        try:
            return await self.primary.records(parents)
        except IndexUnavailable:
            return await self.fallback.records(parents)

    async def stats(self) -> CollectionStats:
        try:
            return await self.primary.stats()
        except IndexUnavailable:
            return await self.fallback.stats()

    async def release(self) -> None:
        await self.primary.release()
        await self.fallback.release()

    async def close(self) -> None:
        await self.primary.close()
        await self.fallback.close()
