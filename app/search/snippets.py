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
import re
import unicodedata
from functools import lru_cache

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
    """The analyzer's matches of `wanted` in `text`, without analyzing every word: only the
    words that begin like a wanted stem (stems are their words' prefixes but for a changed last
    letter: "studi" for "study") go through the analyzer, each distinct word once. Analyzing
    whole passages cost 2 ms of a lone search's event loop for ten passages, most of its own
    work; this finds the same matches (checked over 5,545 SciFact query/passage pairs) except
    for the few irregular words whose stem is not their prefix ("dying" for "die": marked by
    the index, not here). Texts where Python and the analyzer could cut words differently
    take the slow path."""
    if not wanted or not text:
        return []
    lower = text.lower()
    if len(lower) != len(text) or _cut_unlike_python(text):
        # a few characters lowercase to two (offsets would shift), and the analyzer's
        # tokenizer counts some characters Python does not as letters: analyze it all
        return _matched_slowly(text, wanted)
    starts: set[int] = set()
    for prefix in _prefixes(wanted):
        at = lower.find(prefix)
        while at >= 0:
            if at == 0 or not _is_word_char(lower[at - 1]):
                starts.add(at)
            at = lower.find(prefix, at + 1)
    found = []
    for start in sorted(starts):
        end = _WORD.match(text, start + 1).end()  # type: ignore[union-attr]  # always matches
        term = _term(text[start:end])
        if term in wanted:
            found.append((start, end, term))
    return found


def _cut_unlike_python(text: str) -> bool:
    """Whether the analyzer's tokenizer (Rust's `char::is_alphanumeric`: Unicode Alphabetic
    or Numeric) may cut `text` into words unlike Python's `str.isalnum` does: it holds
    combining marks (Indic vowel signs, Arabic harakat, Hebrew points are Alphabetic), other
    symbols (circled letters), or a capital sigma (Python lowercases it by its place in the
    word). Looks at each distinct character once (a regular expression over every such
    character took 20 ms per passage)."""
    return not text.isascii() and any(_unlike(char) for char in set(text) if char > "\x7f")


@lru_cache(maxsize=8192)
def _unlike(char: str) -> bool:
    return char == "\u03a3" or unicodedata.category(char) in ("Mn", "Mc", "Me", "So")


def _is_word_char(char: str) -> bool:
    """Inside a token of the analyzer's tokenizer (letters and digits)."""
    return char.isalnum()


# The rest of a word from where it starts: letters and digits as `str.isalnum` has them
# (Python's `\w` is exactly those plus the underscore). One C call per match, where a Python
# loop over the word's characters took a third of the snippets' time.
_WORD = re.compile(r"[^\W_]*")


def _matched_slowly(text: str, wanted: frozenset[str]) -> list[_Match]:
    return [
        (token.char_offset_from, token.char_offset_to, token.text)
        for token in analyzer().pre_tokenize(text).tokens
        if token.text in wanted
    ]


@lru_cache(maxsize=1024)
def _prefixes(wanted: frozenset[str]) -> tuple[str, ...]:
    """Each wanted stem less its last letter (a one-letter stem whole), once each."""
    return tuple(sorted({term[:-1] if len(term) > 1 else term for term in wanted}))


@lru_cache(maxsize=65536)
def _term(word: str) -> str | None:
    """What the analyzer makes of one word: its stem, or None (a stop word, too long)."""
    analyzed = analyzer().analyze(word)
    return analyzed[0] if len(analyzed) == 1 else None


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
