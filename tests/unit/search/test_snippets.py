"""Snippets: the best window, the query's words marked by character offsets, HTML escaped."""

from __future__ import annotations

import pytest

from app.search.snippets import marked_html, matches, query_terms, snippet


def marked(text: str, spans: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> list[str]:
    return [text[s:e] for s, e in spans]


def test_words_are_marked_as_the_lexical_index_matched_them() -> None:
    text = "The cats were running; a Cat runs. The dog sleeps."
    spans = matches(text, query_terms("cat running"))
    assert marked(text, spans) == ["cats", "running", "Cat", "runs"]  # stems and case
    assert matches(text, query_terms("the and of")) == []  # stop words are never marked


def test_offsets_are_characters_in_multi_byte_text() -> None:
    text = "Zürich — naïve café 😀 in Zürich, Ünïcode résumé"
    wanted = query_terms("zürich résumé ünïcode")
    spans = matches(text, wanted)
    assert marked(text, spans) == ["Zürich", "Zürich", "Ünïcode", "résumé"]
    assert spans[1] == (text.index("Zürich", 1), text.index("Zürich", 1) + 6)
    window = snippet(text, wanted, 24)
    assert text[window.start : window.start + len(window.text)] == window.text
    assert all(
        window.text[s:e].lower() in ("zürich", "ünïcode", "résumé") for s, e in window.highlights
    )


def test_the_window_goes_where_the_words_are() -> None:
    filler = "Nothing to see here at all. " * 20
    text = filler + "Aspirin lowers the risk of stroke in adults. " + filler
    found = snippet(text, query_terms("aspirin stroke"), 80)
    assert "Aspirin lowers the risk of stroke" in found.text and len(found.text) <= 80
    assert marked(found.text, found.highlights) == ["Aspirin", "stroke"]
    assert not found.text.startswith(" ") and found.start > 0
    # a passage only the dense list found still gets a window: its beginning
    dense = snippet(text, query_terms("myocardial infarction"), 80)
    assert dense.start == 0 and dense.highlights == () and len(dense.text) <= 80
    short = snippet("Short text about aspirin.", query_terms("aspirin"), 80)
    assert short.text == "Short text about aspirin." and short.start == 0


def test_html_escapes_everything_but_the_marks() -> None:
    text = 'A <script>alert("x")</script> about cats & dogs'
    wanted = query_terms("script cats")
    html = marked_html(text, matches(text, wanted))
    assert "<script>" not in html and "&lt;<em>script</em>&gt;" in html
    assert "<em>cats</em> &amp; dogs" in html and "&quot;x&quot;" in html
    assert snippet(text, wanted, 200, as_html=True).html == html
    assert snippet(text, wanted, 200).html is None  # only on request


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ("studies of running cells", "A study ran; the runner studied CELLS and cell_lines."),
        ("the immune response", "Immunity: responses, responded, irresponsible immunization."),
        ("Zürich naïve café", "ZÜRICH's naïve CAFÉ, cafés and Zurich."),
        ("İstanbul straße", "İSTANBUL and İstanbul, STRASSE, Straße."),  # İ lowercases to 2
        (
            "\U0001d4b3 emoji \U0001f642 genes",
            "\U0001f642 gene \U0001d4b3 genes, emoji-genes, GENE2",
        ),
        ("p53 il-6 tnf\u03b1", "P53, IL-6 and TNF\u03b1; p53-dependent il6"),
        ("a of the", "stop words only: the a of"),
        (
            "\u0915\u093f\u0924\u093e\u092c",
            "\u092f\u0939 \u0915\u093f\u0924\u093e\u092c \u0939\u0948",
        ),  # vowel signs
        ("\u03b1\u03c3 \u03b2", "\u0391\u03a31\u0392 \u0391\u03a3 \u03b1\u03c3"),  # final sigma
        ("\u24b6bc", "\u24b6bc and abc"),  # a circled letter is a letter to the tokenizer
    ],
)
def test_matches_are_the_analyzers_own(query: str, text: str) -> None:
    """Only words that begin like a query stem are analyzed (for speed): the matches are
    those of analyzing the whole passage (irregular stems such as "die" for "dying" aside)."""
    from app.index.analyzer import analyzer

    wanted = query_terms(query)
    whole = [
        (token.char_offset_from, token.char_offset_to)
        for token in analyzer().pre_tokenize(text).tokens
        if token.text in wanted
    ]
    assert matches(text, wanted) == whole
