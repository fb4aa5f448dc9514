"""Snippets: the window of a passage that best shows why it matched, with the query's words
marked by character offsets (and, on request, as escaped HTML with <em>).

Words are matched the way the lexical index matched them: the passage and the query go
through the same analyzer (`app.index.analyzer`, tantivy's analysis chain), so "running" is
marked for the query "runs" and a stop word never is. The analyzer reports each token's place
in characters, not bytes, so offsets hold for any Unicode text (a Python `text[start:end]`).
Both index backends get the same highlights: the FAISS backend's tantivy has a snippet
generator of its own, Qdrant has none, and one analyzer gives one answer.
"""

from __future__ import annotations

import html

from app.index.analyzer import analyzer, terms
from app.types import Snippet, Span


def query_terms(query: str) -> frozenset[str]:
    return frozenset(terms(query))


def matches(text: str, wanted: frozenset[str]) -> list[Span]:
    """Where the words of `text` that analyze to one of `wanted` are, in characters."""
    return [(start, end) for start, end, _ in _matched(text, wanted)]


def snippet(text: str, wanted: frozenset[str], window: int, as_html: bool = False) -> Snippet:
    """The `window` characters of `text` holding the most distinct matched words (then the
    most matches, then the earliest), cut at word boundaries; the beginning of the text when
    nothing matches (a passage only the dense list found)."""
    found = _matched(text, wanted)
    spans = [(s, e) for s, e, _ in found]
    if len(text) <= window:
        return _snippet(text, 0, spans, as_html)
    start = _best_start(len(text), found, window)
    end = min(len(text), start + window)
    if end < len(text):  # do not cut the last word in two
        cut = text.rfind(" ", start, end)
        end = cut if cut > start else end
    if start > 0:  # nor the first
        space = text.find(" ", start, end)
        start = space + 1 if 0 <= space < end - 1 else start
    inside = [(s - start, e - start) for s, e in spans if s >= start and e <= end]
    return _snippet(text[start:end], start, inside, as_html)


_Match = tuple[int, int, str]  # start, end (characters), the analyzed word


def _matched(text: str, wanted: frozenset[str]) -> list[_Match]:
    if not wanted or not text:
        return []
    return [
        (token.char_offset_from, token.char_offset_to, token.text)
        for token in analyzer().pre_tokenize(text).tokens
        if token.text in wanted
    ]


def _snippet(text: str, start: int, spans: list[Span], as_html: bool) -> Snippet:
    return Snippet(text, start, tuple(spans), marked_html(text, spans) if as_html else None)


def _best_start(length: int, found: list[_Match], window: int) -> int:
    """The best window's start among windows that begin a little before a match. Windows move
    right as their anchor does, so one pass with two pointers counts what each holds (a long
    passage can match a common word hundreds of times)."""
    if not found:
        return 0
    lead = window // 5  # some context before the first match
    best, best_key = 0, (-1, -1, 0)
    first = last = 0  # the matches inside the current window: found[first:last]
    counts: dict[str, int] = {}
    for anchor, _, _ in found:
        start = max(0, min(anchor - lead, length - window))
        while last < len(found) and found[last][1] <= start + window:
            counts[found[last][2]] = counts.get(found[last][2], 0) + 1
            last += 1
        while first < last and found[first][0] < start:
            term = found[first][2]
            counts[term] -= 1
            if not counts[term]:
                del counts[term]
            first += 1
        key = (len(counts), last - first, -start)
        if key > best_key:
            best, best_key = start, key
    return best


def marked_html(text: str, spans: list[Span] | tuple[Span, ...]) -> str:
    """`text` as HTML, every character escaped, the spans wrapped in <em>: a passage that
    holds `<script>` shows as text."""
    out, at = [], 0
    for start, end in sorted(spans):
        if start < at:
            continue  # overlapping spans cannot happen with one tokenizer; be safe anyway
        out += [html.escape(text[at:start]), "<em>", html.escape(text[start:end]), "</em>"]
        at = end
    out.append(html.escape(text[at:]))
    return "".join(out)
