"""The lexical side's one analyzer, shared by every backend, and BM25's term weights.

One analyzer definition, built with tantivy's analysis chain (Unicode word tokens, lowercase,
tokens over 40 bytes dropped, English stop words, the Snowball English stemmer). The FAISS
backend registers it on its tantivy index; the Qdrant backend runs the same analyzer here to
turn a passage into a sparse vector of BM25 term weights (Qdrant multiplies them by its own IDF)
and a query into its terms. Same tokens on both sides by construction, no network needed (unlike
fastembed's BM25, which fetches its stop words and stemmer from the hub).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import tantivy

ANALYZER = "semsearch_en"
# BM25 as tantivy computes it (its k1 and b are fixed), so both backends rank alike.
BM25_K1 = 1.2
BM25_B = 0.75


@lru_cache(maxsize=1)
def analyzer() -> tantivy.TextAnalyzer:
    """The analyzer every backend uses (tantivy's analyzers are immutable and thread-safe)."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stopword("english"))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def terms(text: str) -> list[str]:
    """The analyzed terms of `text`, in order, repeats kept."""
    return list(analyzer().analyze(text))


def term_id(term: str) -> int:
    """A stable 32-bit id for a term: the index of its dimension in a sparse vector."""
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest(), "little")


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


def document_vector(text: str, avg_terms: float) -> SparseVector:
    """BM25's term-frequency part for each term of a passage: tf (k1 + 1) / (tf + k1 (1 - b +
    b |d| / avgdl)). The IDF part is Qdrant's (the collection's IDF modifier), computed over the
    points as they are now; `avg_terms` is fixed when the collection is first written."""
    counts = Counter(terms(text))
    length = sum(counts.values())
    norm = BM25_K1 * (1 - BM25_B + BM25_B * length / max(avg_terms, 1.0))
    weights: dict[int, float] = {}
    for term, tf in counts.items():  # two terms may share an id: their weights add up
        index = term_id(term)
        weights[index] = weights.get(index, 0.0) + tf * (BM25_K1 + 1) / (tf + norm)
    return SparseVector(list(weights), list(weights.values()))


def query_vector(text: str) -> SparseVector:
    """Each distinct query term once, weight 1: a query term counts as much as tantivy's
    BooleanQuery of its (deduplicated) term queries counts it."""
    ids = sorted({term_id(term) for term in terms(text)})
    return SparseVector(ids, [1.0] * len(ids))
