"""Shaping a ranking into answers: chunks gathered into documents, near-duplicates spread out
(MMR, on request), a score floor, one page, and a snippet with highlights per result.

The ranking arrives as chunks, best first, every candidate included; shaping keeps that order
and never scores anything again, so a document's rank and score are its best chunk's and a page
is a slice of one ranking: within one generation, pages have no repeats and no gaps.
"""

from __future__ import annotations

from dataclasses import replace

from app.search.snippets import matches, query_terms, snippet
from app.types import ChunkMatch, RankedHit

# MMR compares every pick with every candidate: over the best this many only (the rest follow
# in their order), which bounds its cost at a few tens of milliseconds.
DIVERSIFY_AT_MOST = 200


def by_document(ranked: list[RankedHit]) -> list[RankedHit]:
    """One result per source document, in the order of its best chunk: that chunk's passage,
    score and reranker score, and every chunk of it that was ranked (id, score, rank)."""
    order: list[str] = []
    chunks: dict[str, list[ChunkMatch]] = {}
    best: dict[str, RankedHit] = {}
    for item in ranked:
        document = item.document_id
        if document not in best:
            order.append(document)
            best[document] = item
            chunks[document] = []
        chunks[document].append(ChunkMatch(item.hit.id, item.score, item.rank))
    return [best[d].placed(rank, tuple(chunks[d])) for rank, d in enumerate(order, 1)]


def by_chunk(ranked: list[RankedHit]) -> list[RankedHit]:
    """Every chunk its own result, listing itself as its one matched chunk."""
    return [r.placed(r.rank, (ChunkMatch(r.hit.id, r.score, r.rank),)) for r in ranked]


def diversify(items: list[RankedHit], diversity: float, keep: int) -> list[RankedHit]:
    """Maximal marginal relevance: the first `keep` picked one at a time by (1 - diversity) x
    relevance - diversity x (the largest similarity to one already picked), the rest after them
    in their order. Relevance is the score scaled to [0, 1] over the candidates; similarity is
    the overlap (Jaccard) of the passages' analyzed words, which is what near-duplicates share,
    and needs no vectors from the index."""
    if diversity <= 0 or len(items) < 2:
        return items
    scores = [i.score for i in items]
    low, spread = min(scores), (max(scores) - min(scores)) or 1.0
    relevance = [(s - low) / spread for s in scores]
    words = [query_terms(i.hit.passage) for i in items]
    chosen: list[int] = []
    nearest = [0.0] * len(items)  # highest similarity to anything chosen so far
    while len(chosen) < min(keep, len(items)):
        taken = set(chosen)
        picked = max(
            (i for i in range(len(items)) if i not in taken),
            key=lambda i: (1 - diversity) * relevance[i] - diversity * nearest[i],
        )
        chosen.append(picked)
        for i in range(len(items)):
            nearest[i] = max(nearest[i], _jaccard(words[i], words[picked]))
    picked_set = set(chosen)
    rest = [i for i in range(len(items)) if i not in picked_set]
    return [items[i].placed(rank, items[i].chunks) for rank, i in enumerate(chosen + rest, 1)]


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def at_least(items: list[RankedHit], min_score: float | None) -> list[RankedHit]:
    return items if min_score is None else [i for i in items if i.score >= min_score]


def page(items: list[RankedHit], offset: int, size: int) -> tuple[list[RankedHit], int | None]:
    """The results from `offset` on, `size` of them, and where the next page starts (None
    when nothing is left)."""
    end = offset + size
    return items[offset:end], end if end < len(items) else None


def with_snippets(
    items: list[RankedHit], query: str, window: int, as_html: bool
) -> list[RankedHit]:
    """Each result's best window of its passage and its title, the query's words marked."""
    wanted = query_terms(query)
    return [
        replace(
            item,
            snippet=snippet(item.hit.text, wanted, window, as_html),
            title_highlights=tuple(matches(item.hit.title, wanted)),
        )
        for item in items
    ]
