"""Plain domain types shared by the engine, the wire schemas and the clients.

Nothing here imports pydantic, FastAPI or torch: the engine sees only these.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

# time.monotonic, or a fake one in tests (which step time instead of sleeping)
Clock = Callable[[], float]

FloatArray = npt.NDArray[np.float32]
Metadata = dict[str, Any]
FilterValue = str | int | float | bool
# metadata field -> a value (equality) or a list of values (any of them)
Filter = dict[str, FilterValue | list[FilterValue]]


class InputType(StrEnum):
    """How a text is used; asymmetric models (E5, BGE) embed queries and passages differently."""

    QUERY = "query"
    PASSAGE = "passage"


class SearchMode(StrEnum):
    """Which lists make the first stage: words and meaning fused, or one of them."""

    HYBRID = "hybrid"
    DENSE = "dense"
    LEXICAL = "lexical"


class FusionMethod(StrEnum):
    BLEND = "blend"  # z-scores of the two lists, weighted
    RRF = "rrf"  # reciprocal rank fusion, weighted


@dataclass(frozen=True)
class Fusion:
    """How hybrid search fuses its two lists (`app.search.fusion`): `weight` is the lexical
    list's share, in [0, 1]."""

    method: FusionMethod
    weight: float
    rrf_k: int = 60

    def key(self) -> dict[str, object]:
        """What identifies it in a cache key and in an answer."""
        return {"method": self.method.value, "weight": round(self.weight, 4), "rrf_k": self.rrf_k}


@dataclass(frozen=True)
class Calibration:
    """The fusion weight chosen for a collection when it was published (with no judgments:
    see `app.search.calibration`), and what it was chosen on."""

    weight: float  # the lexical list's share in a `blend`
    documents: int  # records in the collection when it was calibrated
    queries: int  # pseudo-queries it was measured with (0: too few usable documents)
    scores: dict[str, float]  # MRR@10 by candidate weight

    def fusion(self) -> Fusion:
        return Fusion(FusionMethod.BLEND, self.weight)


class Truncate(StrEnum):
    """What to do with an input longer than the model's window (NVIDIA's convention).

    NONE refuses the input (422) so nothing is cut silently; START drops tokens from the
    beginning, END from the end.
    """

    NONE = "NONE"
    START = "START"
    END = "END"


@dataclass(frozen=True, slots=True)
class Document:
    """One passage to index. `id` is stable; re-indexing is keyed by it.

    A long document is indexed as chunks (`doc#0`, `doc#1`, ...) whose `parent` is the
    document's id; an unchunked document is its own parent.
    """

    id: str
    text: str
    title: str = ""
    metadata: Metadata = field(default_factory=dict)
    parent: str = ""

    @property
    def parent_id(self) -> str:
        return self.parent or self.id

    @property
    def passage(self) -> str:
        """The text the models see: title and body, as the models were trained on."""
        return f"{self.title} {self.text}" if self.title else self.text


def content_hash(document: Document) -> str:
    """What decides whether a document must be re-embedded and rewritten."""
    payload = json.dumps(
        [document.title, document.text, document.metadata], sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Hit:
    """One retrieved passage, with the stored document it points to.

    `score` is what the list it is in ranks by: cosine from a dense search, BM25 from a lexical
    one, the fused score once the two lists are fused. Fusion also keeps each list's own score
    (None where that list did not find it).
    """

    id: str
    score: float
    text: str
    title: str = ""
    metadata: Metadata = field(default_factory=dict)
    dense_score: float | None = None
    lexical_score: float | None = None

    def scored(self, score: float, dense: float | None, lexical: float | None) -> Hit:
        """This passage with other scores. Not `dataclasses.replace`, which costs twice as
        much: a search rescores every candidate, hundreds of them."""
        return Hit(self.id, score, self.text, self.title, self.metadata, dense, lexical)

    @property
    def found_by(self) -> list[str]:
        return [
            side
            for side, score in (("dense", self.dense_score), ("lexical", self.lexical_score))
            if score is not None
        ]

    @property
    def passage(self) -> str:
        return f"{self.title} {self.text}" if self.title else self.text


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a model backend reports about itself (served at the services' /info)."""

    model_id: str
    kind: str  # "embedding" | "reranker"
    dimension: int | None
    max_tokens: int
    backend: str
    device: str


class GroupBy(StrEnum):
    """What one result is: a source document (its chunks gathered) or one indexed chunk."""

    DOCUMENT = "document"
    CHUNK = "chunk"


Span = tuple[int, int]  # [start, end) in characters


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """One search, as the pipeline sees it (already validated and defaulted)."""

    query: str
    collection: str
    top_k: int
    candidates: int
    rerank: bool = True
    timeout_ms: int | None = None  # None: the gateway's default deadline
    filter: Filter | None = None
    rerank_depth: int | None = None  # None: the gateway's default
    rerank_weight: float | None = None  # None: the gateway's default
    mode: SearchMode | None = None  # None: the gateway's default
    fusion_method: str | None = None  # None: the collection's (calibrated) fusion
    fusion_weight: float | None = None  # lexical share; None: the collection's
    group_by: GroupBy | None = None  # what a result is (top_k counts them); None: the default
    offset: int = 0  # results to skip: the next page starts where the last one ended
    min_score: float | None = None  # results scoring less are dropped
    diversity: float = 0.0  # MMR: 0 off, up to 1 (novelty weighs as much as the score)
    highlight_html: bool = False  # snippets also as escaped HTML with <em>
    generation: int | None = None  # the generation earlier pages came from


@dataclass(frozen=True, slots=True)
class Snippet:
    """The window of a passage that best shows why it matched (`app.search.snippets`)."""

    text: str
    start: int  # where the window begins in the passage's text, in characters
    highlights: tuple[Span, ...]  # the query's words, relative to `text`
    html: str | None = None  # on request: escaped, the words in <em>


@dataclass(frozen=True, slots=True)
class ChunkMatch:
    """One chunk of a document result that matched: its score and its rank among chunks."""

    id: str
    score: float
    rank: int


@dataclass(frozen=True, slots=True)
class RankedHit:
    """A final result: the passage (for a document, its best chunk), its reranker score when
    reranked, its rank (1-based, counted over every page), and what shaping added."""

    hit: Hit
    rank: int
    score: float
    rerank_score: float | None
    chunks: tuple[ChunkMatch, ...] = ()  # grouped by document: its chunks that matched
    snippet: Snippet | None = None
    title_highlights: tuple[Span, ...] = ()

    @property
    def document_id(self) -> str:
        return str(self.hit.metadata.get("parent_id", self.hit.id))

    def placed(self, rank: int, chunks: tuple[ChunkMatch, ...]) -> RankedHit:
        """This result at another rank with its matched chunks (cheaper than
        `dataclasses.replace`, as `Hit.scored`)."""
        return RankedHit(
            self.hit,
            rank,
            self.score,
            self.rerank_score,
            chunks,
            self.snippet,
            self.title_highlights,
        )


@dataclass(slots=True)
class SearchResult:
    """What the pipeline answers; the gateway adds nothing but the wire shape."""

    results: list[RankedHit]
    reranked: bool
    degraded: list[str]
    cached: bool
    collection: str
    index_backend: str
    generation: int
    embedder_model: str
    reranker_model: str | None
    timings_ms: dict[str, float]
    request_id: str | None
    mode: SearchMode = SearchMode.DENSE  # what the first stage really was
    fusion: dict[str, object] | None = None  # how the two lists were fused (hybrid only)
    group_by: GroupBy = GroupBy.CHUNK
    offset: int = 0
    next_offset: int | None = None  # where the next page starts; None: this is the last
    generation_changed: bool = False  # asked for a page of another generation than this


def lone_surrogate_at(text: str) -> int | None:
    """Where `text` holds a lone UTF-16 surrogate, or None. JSON escapes ("\\ud800") and
    undecodable bytes read with `surrogateescape` become one; no tokenizer, SQLite row or
    UTF-8 writer accepts it, so every boundary that takes text checks with this."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None
