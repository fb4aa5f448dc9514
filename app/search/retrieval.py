"""The first stage of a search: the candidates, from the dense list, the lexical list, or both
fused (`app.search.fusion`), each call behind its guard.

    lexical (BM25) --------------------------\\
    embed query -> dense ANN ----------------- fuse (hybrid) or one list

The lexical search runs while the query is embedded. Without a query vector (embedder down,
its circuit open, its time spent) the lexical list answers alone, flagged `embedder`; 503
only when the collection has no lexical index. Without the lexical list, the dense one
answers, flagged `lexical`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from app import metrics, tracing
from app.errors import (
    CircuitOpen,
    DeadlineExceeded,
    EmbedderUnavailable,
    IndexUnavailable,
    InputTooLong,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    SemsearchError,
)
from app.index.base import AnnResult, Collection
from app.logs import get_logger
from app.models import Embedder
from app.resilience import Deadline, StageGuard
from app.search.config import Guards
from app.search.fusion import fuse, single
from app.types import Filter, FloatArray, Fusion, Hit, InputType, SearchMode, Truncate

log = get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class FirstStage:
    hits: list[Hit]  # best first
    mode: SearchMode  # what it really was, after any degradation
    backend: str
    generation: int
    vector: FloatArray | None  # the query's, for a second, larger fetch
    saturated: bool  # a list came back full: a larger fetch would find more


@dataclass
class Search:
    """What the first stage of one search reads and records."""

    text: str
    index: Collection
    mode: SearchMode
    fusion: Fusion | None
    filter: Filter | None
    deadline: Deadline
    timings: dict[str, float]
    degraded: list[str]


class Retriever:
    def __init__(self, embedder: Embedder, guards: Guards) -> None:
        self.embedder = embedder
        self.guards = guards

    async def candidates(
        self, search: Search, k: int, vector: FloatArray | None = None
    ) -> FirstStage:
        """The best `k` candidates (`vector`: the query's, when a smaller fetch embedded it)."""
        no_vector = "embedder" in search.degraded  # a smaller fetch found none already
        want_dense = search.mode is not SearchMode.LEXICAL and not no_vector
        lexical = (
            asyncio.create_task(self._lexical(search, k))
            if search.mode is not SearchMode.DENSE or no_vector
            else None
        )
        try:
            dense: AnnResult | None = None
            if want_dense:
                try:
                    if vector is None:
                        with stage(search.timings, "embed"):
                            vector = await self._embed(search.text, search.deadline)
                except EmbedderUnavailable:
                    if not search.index.has_lexical:
                        raise
                    search.degraded.append("embedder")
                    if lexical is None:  # dense asked for: words are better than nothing
                        lexical = asyncio.create_task(self._lexical(search, k))
                else:
                    with stage(search.timings, "ann"):
                        dense = await self._ann(search, vector, k)
            words: AnnResult | None = None
            if lexical is not None:
                try:
                    words = await lexical
                except (InvalidInput, Overloaded, DeadlineExceeded):
                    raise
                except SemsearchError as exc:
                    if dense is None:
                        raise
                    log.warning("lexical_skipped", reason=exc.message)
                    search.degraded.append("lexical")
        finally:
            if lexical is not None and not lexical.done():
                lexical.cancel()
        if any(r is not None and r.degraded for r in (dense, words)):
            search.degraded.append("index")
        full = any(r is not None and len(r.hits[0]) >= k for r in (dense, words))
        if dense is not None and words is not None:
            assert search.fusion is not None
            fused = fuse(dense.hits[0], words.hits[0], search.fusion)[:k]
            return FirstStage(
                fused, SearchMode.HYBRID, dense.backend, dense.generation, vector, full
            )
        answer = dense if dense is not None else words
        assert answer is not None
        side = "dense" if dense is not None else "lexical"
        return FirstStage(
            single(answer.hits[0], side),
            SearchMode(side),
            answer.backend,
            answer.generation,
            vector,
            full,
        )

    async def _lexical(self, search: Search, k: int) -> AnnResult:
        index = search.index
        with stage(search.timings, "lexical"):
            return await _guarded(
                self.guards.lexical,
                lambda: index.lexical_search([search.text], k, search.filter),
                search.deadline,
                "the lexical index",
            )

    async def _ann(self, search: Search, vector: FloatArray, k: int) -> AnnResult:
        index = search.index
        return await _guarded(
            self.guards.index,
            lambda: index.search(vector, k, search.filter),
            search.deadline,
            "the index",
        )

    async def _embed(self, text: str, deadline: Deadline) -> FloatArray:
        try:
            embeddings = await self.guards.embed.run(
                lambda: self.embedder.embed([text], InputType.QUERY, Truncate.NONE), deadline
            )
        except InputTooLong as exc:
            raise InvalidInput(exc.message.replace("input 0", "the query"), field="query") from exc
        except PayloadTooLarge as exc:  # over the embedder service's own limits
            raise InvalidInput(
                f"the embedder refused the query: {exc.message}", field="query"
            ) from exc
        except (InvalidInput, Overloaded, DeadlineExceeded):
            raise
        except CircuitOpen as exc:
            raise EmbedderUnavailable(
                "the embedder is failing (circuit open), so no search is possible",
                retry_after_s=exc.retry_after_s,
            ) from exc
        except Exception as exc:
            reason = exc.message if isinstance(exc, SemsearchError) else repr(exc)
            raise EmbedderUnavailable(
                f"the query cannot be embedded, so no search is possible: {reason}"
            ) from exc
        return embeddings.vectors


async def _guarded(
    guard: StageGuard, work: Callable[[], Awaitable[T]], deadline: Deadline, what: str
) -> T:
    """`work` under its guard; any failure but the caller's (bad input, overload, deadline)
    becomes IndexUnavailable naming `what`."""
    try:
        return await guard.run(work, deadline)
    except (InvalidInput, Overloaded, DeadlineExceeded):
        raise
    except CircuitOpen as exc:
        raise IndexUnavailable(
            f"{what} is failing (circuit open): {exc.message}", retry_after_s=exc.retry_after_s
        ) from exc
    except Exception as exc:
        reason = exc.message if isinstance(exc, SemsearchError) else repr(exc)
        raise IndexUnavailable(f"{what} cannot be searched: {reason}") from exc


# The stages that wait on a model's batch queue when the models run in-process. Only these
# record the queue's time: lexical runs concurrently with embed and shares its RequestTiming.
_BATCHED_STAGES = frozenset({"embed", "rerank"})


@contextmanager
def stage(timings: dict[str, float], name: str) -> Iterator[None]:
    """Time a stage into `timings` (ms) and its histogram, inside a `search.<name>` span."""
    started = time.perf_counter()
    try:
        with tracing.span(f"search.{name}", batched=name in _BATCHED_STAGES):
            yield
    finally:
        elapsed = time.perf_counter() - started
        timings[name] = round(elapsed * 1000, 3)
        metrics.SEARCH_STAGE_LATENCY.labels(name).observe(elapsed)
