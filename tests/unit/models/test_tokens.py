"""TextTokenizer: windows, prefixes and (query, passage) pairs, on MiniLM's real tokenizer."""

from __future__ import annotations

import pytest

from app.errors import InputTooLong
from app.models.paths import resolve_model_path
from app.models.tokens import TextTokenizer
from app.types import Truncate

MINILM = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")


def tokenizer(window: int) -> TextTokenizer:
    return TextTokenizer.from_folder(MINILM, window)


def words(tok: TextTokenizer, ids: list[int]) -> list[str]:
    return tok._tok.decode(ids).split()


@pytest.mark.parametrize("truncate", [Truncate.START, Truncate.END])
def test_truncation_keeps_the_prefix_in_front(truncate: Truncate) -> None:
    tok = tokenizer(16)
    text = "first " + "zebra " * 30 + "last"
    [encoded] = tok.encode([text], truncate, prefix="query: ")
    assert len(encoded) == 16
    seen = words(tok, encoded.ids)
    assert seen[:2] == ["query", ":"]
    # START cuts the beginning of the text, END its end; the prefix is never cut
    assert seen[-1] == ("last" if truncate is Truncate.START else "zebra")
    assert seen[2] == ("zebra" if truncate is Truncate.START else "first")
    assert encoded.original_tokens == 2 + 1 + 30 + 1 + 2  # query :, first, zebras, last, CLS/SEP


def test_a_prefixed_text_that_fits_is_encoded_as_one_text() -> None:
    tok = tokenizer(32)
    [prefixed] = tok.encode(["cats purr"], Truncate.START, prefix="query: ")
    [whole] = tok.encode(["query: cats purr"], Truncate.NONE)
    assert prefixed == whole
    with pytest.raises(InputTooLong) as raised:
        tok.encode(["ok", "zebra " * 40], Truncate.NONE, prefix="query: ")
    assert raised.value.field == "input[1]"


def test_a_pair_that_fits_keeps_the_whole_query() -> None:
    tok = tokenizer(64)
    query = "word " * 40 + "zebra"  # 41 tokens: over half the window, but the pair fits
    [pair] = tok.encode_pairs(query, ["a b c d e"], Truncate.NONE)
    assert len(pair) == 41 + 5 + 3
    [pair] = tok.encode_pairs(query, ["a"], Truncate.END)
    assert "zebra" in words(tok, pair.ids)


def test_an_overflowing_pair_cuts_the_passage_then_the_query_beyond_half() -> None:
    tok = tokenizer(64)  # room for 61 tokens next to [CLS] [SEP] [SEP]
    long_query = "word " * 69 + "zebra"
    short, long = tok.encode_pairs(long_query, ["a b c d e", "b " * 100], Truncate.END)
    assert len(short) == len(long) == 64
    assert words(tok, short.ids).count("word") == 56  # the short passage is kept whole
    assert words(tok, short.ids)[-5:] == ["a", "b", "c", "d", "e"]
    assert words(tok, long.ids).count("word") == 30  # the query keeps half the room
    assert words(tok, long.ids).count("b") == 31

    with pytest.raises(InputTooLong) as raised:
        tok.encode_pairs(long_query, ["a"], Truncate.NONE)
    assert raised.value.field == "query"
    with pytest.raises(InputTooLong) as raised:
        tok.encode_pairs("short query", ["a", "b " * 100], Truncate.NONE)
    assert raised.value.field == "passages[1]"
