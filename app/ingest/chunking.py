"""Chunking: a document too long for the model window becomes overlapping chunks that fit,
cut on token boundaries with the model's own tokenizer."""

from __future__ import annotations

import re
from typing import Protocol

from app.models.tokens import TextTokenizer
from app.types import Document, ModelInfo


class SpanTokenizer(Protocol):
    """What chunking needs of a tokenizer: its window and where each token sits in a text."""

    @property
    def window(self) -> int: ...

    @property
    def special_tokens(self) -> int: ...

    def spans(self, text: str) -> list[tuple[int, int]]: ...


_WORD = re.compile(r"\w+")


class WordTokenizer:
    """Words (runs of word characters) as tokens: how the fake embedder counts its window.
    A fake has no tokenizer files; its chunks must fit its window in its own words."""

    special_tokens = 0

    def __init__(self, window: int) -> None:
        self.window = window

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [match.span() for match in _WORD.finditer(text)]


class Chunker:
    """Cuts a document whose passage (title + text) would not fit the model window into
    overlapping chunks `doc#0`, `doc#1`, ... that do, on token boundaries. Each chunk keeps
    the title and the metadata, plus `parent_id` and `chunk` (its position)."""

    def __init__(self, tokenizer: SpanTokenizer, max_tokens: int | None = None, overlap: int = 32):
        self._tok = tokenizer
        self.max_tokens = min(max_tokens or tokenizer.window, tokenizer.window)
        self.overlap = overlap

    @classmethod
    def for_model(
        cls, model: ModelInfo, max_tokens: int | None = None, overlap: int = 32
    ) -> Chunker:
        """Chunks that fit `model`'s window, cut with its own tokenizer (fetched alone when
        the model is remote: chunking needs no weights). A fake model counts words."""
        if model.backend == "fake":
            return cls(WordTokenizer(model.max_tokens), max_tokens, overlap)
        from app.models.paths import model_folder

        folder = model_folder(model.model_id, tokenizer_only=True)
        return cls(TextTokenizer.from_folder(folder, model.max_tokens), max_tokens, overlap)

    def split(self, doc: Document) -> list[Document]:
        title_tokens = len(self._tok.spans(doc.title)) + 1 if doc.title else 0
        room = max(
            16, min(self.max_tokens, self._tok.window - self._tok.special_tokens) - title_tokens
        )
        spans = self._tok.spans(doc.text)
        if len(spans) <= room:
            return [doc]
        overlap = min(self.overlap, room // 2)
        chunks: list[Document] = []
        start = 0
        while True:
            end = min(start + room, len(spans))
            if end < len(spans):  # do not cut a word in two: end where a word starts
                end = _word_start(spans, end, floor=start + 1)
            chunks.append(
                Document(
                    id=f"{doc.id}#{len(chunks)}",
                    text=doc.text[spans[start][0] : spans[end - 1][1]],
                    title=doc.title,
                    metadata={**doc.metadata, "parent_id": doc.id, "chunk": len(chunks)},
                    parent=doc.id,
                )
            )
            if end == len(spans):
                return chunks
            start = _word_start(spans, max(end - overlap, start + 1), floor=start + 1)


def _word_start(spans: list[tuple[int, int]], i: int, floor: int) -> int:
    """The nearest token at or before `i` (not before `floor`) that begins a word, i.e. is
    separated from the token before it by a gap in the text (word pieces touch); `i` itself
    when no word starts in between (one very long word)."""
    for j in range(i, floor - 1, -1):
        if spans[j][0] != spans[j - 1][1]:
            return j
    return i
