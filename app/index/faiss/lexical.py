"""A generation's lexical index: tantivy (BM25, on-disk segments) over the same passages the
vectors were made from, built at publish next to index.faiss and swapped in with it.

    generations/gen-000007/lexical/   tantivy's segment files and meta.json

Documents are the passages (title + text, as embedded), analyzed with `app.index.lexical`'s
analyzer, keyed by the store's `seq` (a fast field: filters become a term set on it, hits are
one primary-key lookup away from their text, as FAISS hits are).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tantivy

from app.index.analyzer import ANALYZER, analyzer, terms

DIRNAME = "lexical"
_WRITER_HEAP = 256 * 2**20


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field("seq", stored=False, indexed=True, fast=True)
    # positions: phrase queries and snippets; stored: snippets come from tantivy itself
    builder.add_text_field("text", stored=True, tokenizer_name=ANALYZER, index_option="position")
    return builder.build()


def _open(path: Path, create: bool) -> tantivy.Index:
    index = tantivy.Index(_schema(), path=str(path), reuse=not create)
    index.register_tokenizer(ANALYZER, analyzer())
    return index


def write_lexical(path: Path, passages: Iterable[tuple[int, str]]) -> int:
    """Index (seq, passage) pairs into a new tantivy index at `path`; returns how many."""
    path.mkdir(parents=True, exist_ok=True)
    index = _open(path, create=True)
    writer = index.writer(_WRITER_HEAP, num_threads=max(1, min(4, len(os.sched_getaffinity(0)))))
    count = 0
    for seq, passage in passages:
        doc = tantivy.Document()
        doc.add_unsigned("seq", seq)
        doc.add_text("text", passage)
        writer.add_document(doc)
        count += 1
    writer.commit()
    writer.wait_merging_threads()
    return count


class LexicalReader:
    """Searches one generation's lexical index. Immutable once opened; safe across threads."""

    def __init__(self, path: Path) -> None:
        self._index = _open(path, create=False)
        self._schema = self._index.schema
        self._searcher = self._index.searcher()

    @property
    def count(self) -> int:
        return int(self._searcher.num_docs)

    def query(self, text: str, allowed: np.ndarray | None = None) -> tantivy.Query | None:
        """BM25 over the distinct analyzed terms of `text` (not parsed as query syntax: user
        input is words, not operators), narrowed to the FAISS ids `allowed`; None when `text`
        has no indexed term."""
        wanted = list(dict.fromkeys(terms(text)))
        if not wanted:
            return None
        query = tantivy.Query.boolean_query(
            [
                (tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "text", term))
                for term in wanted
            ]
        )
        if allowed is not None:
            narrowed = tantivy.Query.term_set_query(self._schema, "seq", [int(s) for s in allowed])
            # a filter only selects: it must add nothing to the BM25 score
            query = tantivy.Query.boolean_query(
                [
                    (tantivy.Occur.Must, query),
                    (tantivy.Occur.Must, tantivy.Query.const_score_query(narrowed, 0.0)),
                ]
            )
        return query

    def search(
        self, text: str, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(BM25 scores, FAISS ids) of the best `k` passages, best first."""
        query = self.query(text, allowed)
        if query is None or k <= 0 or (allowed is not None and len(allowed) == 0):
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        found = self._searcher.search(query, limit=k, count=False).hits
        scores = np.fromiter((score for score, _ in found), dtype=np.float32, count=len(found))
        seqs = self._searcher.fast_field_values("seq", [address for _, address in found])
        return scores, np.asarray(seqs, dtype=np.int64)
