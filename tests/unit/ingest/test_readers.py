"""Indexing inputs (CSV, directories), chunking, deletes and dry runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.errors import InvalidInput
from app.index.collections import NothingStaged
from app.index.faiss.index import FaissIndex
from app.ingest.chunking import Chunker
from app.ingest.indexer import index_documents
from app.ingest.readers import CsvColumns, InputFormat, count_documents, read_documents
from app.models.fake import FakeEmbedder
from app.models.paths import resolve_model_path
from app.models.tokens import TextTokenizer
from app.types import Document, InputType, Truncate
from tests.conftest import faiss_options


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.from_folder(
        resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"), 64
    )


async def open_index(tmp_path: Path, embedder: FakeEmbedder) -> FaissIndex:
    return await FaissIndex.create(
        tmp_path, "docs", embedder.info.model_id, embedder.info.dimension or 0, faiss_options()
    )


def test_csv_with_column_mapping(tmp_path: Path) -> None:
    path = tmp_path / "docs.csv"
    path.write_text(
        'key,body,heading,lang,year\n1,"first, with a comma",One,en,2020\n2,second,,de,\n'
    )
    docs = list(read_documents(path, columns=CsvColumns(id="key", text="body", title="heading")))
    assert docs == [
        Document("1", "first, with a comma", "One", {"lang": "en", "year": "2020"}),
        Document("2", "second", "", {"lang": "de"}),
    ]
    only_lang = list(
        read_documents(path, columns=CsvColumns(id="key", text="body", metadata=("lang",)))
    )
    assert only_lang[0].metadata == {"lang": "en"}
    assert count_documents(path) == 2
    with pytest.raises(InvalidInput, match="no column 'id'"):
        list(read_documents(path))
    tsv = tmp_path / "docs.tsv"
    tsv.write_text("id\ttext\na\tx y\n")
    assert next(iter(read_documents(tsv))).text == "x y"


def test_directory_of_text_and_markdown(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "faiss-intro.md").write_text(
        "# FAISS in practice\n\nIndexes and recall.\n"
    )
    (tmp_path / "plain_file.txt").write_text("Just text.\n")
    (tmp_path / "empty.md").write_text("\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    docs = list(read_documents(tmp_path))
    assert [(d.id, d.title, d.text) for d in docs] == [
        ("notes/faiss-intro.md", "FAISS in practice", "Indexes and recall."),
        ("plain_file.txt", "plain file", "Just text."),
    ]
    assert docs[0].metadata == {"path": "notes/faiss-intro.md", "format": "md"}
    assert count_documents(tmp_path) == 3  # counted before reading: the empty one is skipped later


def test_ids_may_not_look_like_chunks(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": "a#1", "text": "x"}\n')
    with pytest.raises(InvalidInput, match="'#'"):
        list(read_documents(path))


def test_chunks_fit_the_window_overlap_and_keep_provenance(tokenizer: TextTokenizer) -> None:
    words = " ".join(f"word{i}" for i in range(300))
    doc = Document("paper", words, "A Title", {"lang": "en"})
    chunks = Chunker(tokenizer, overlap=8).split(doc)
    assert len(chunks) > 3
    assert [c.id for c in chunks] == [f"paper#{i}" for i in range(len(chunks))]
    for i, chunk in enumerate(chunks):
        assert chunk.parent_id == "paper" and chunk.title == "A Title"
        assert chunk.metadata == {"lang": "en", "parent_id": "paper", "chunk": i}
        # title + text + [CLS]/[SEP] fit the 64-token window
        assert len(tokenizer.spans(chunk.passage)) + tokenizer.special_tokens <= 64
    first, second = chunks[0].text.split(), chunks[1].text.split()
    assert set(first[-4:]) <= set(second)  # neighbours overlap
    assert chunks[-1].text.endswith("word299")
    short = Document("note", "a short note", "t")
    assert Chunker(tokenizer).split(short) == [short]


async def test_a_fake_model_chunks_in_the_words_it_counts() -> None:
    embedder = FakeEmbedder(model_id="fake:some/model", max_tokens=32)
    chunker = Chunker.for_model(embedder.info, overlap=4)  # no tokenizer files to look up
    doc = Document("long", " ".join(f"w{i}" for i in range(100)), "A Title")
    chunks = chunker.split(doc)
    assert len(chunks) > 3 and chunks[-1].text.endswith("w99")
    # each passage fits the fake's window: embedding refuses nothing
    await embedder.embed([c.passage for c in chunks], InputType.PASSAGE, Truncate.NONE)
    assert chunker.split(Document("short", "three short words")) == [
        Document("short", "three short words")
    ]


LONG_PAPER = Document("paper", " ".join(f"w{i}" for i in range(200)))
SHORT_PAPER = Document("paper", "now a short paper")


async def chunking(
    tmp_path: Path, tokenizer: TextTokenizer
) -> tuple[FakeEmbedder, FaissIndex, Chunker]:
    """A fake embedder with a 64-token window, its index, and a chunker without overlap."""
    embedder = FakeEmbedder(model_id="fake", max_tokens=64)
    return embedder, await open_index(tmp_path, embedder), Chunker(tokenizer, overlap=0)


async def test_shorter_new_version_deletes_its_stale_chunks(
    tmp_path: Path, tokenizer: TextTokenizer
) -> None:
    embedder, index, chunker = await chunking(tmp_path, tokenizer)
    first = await index_documents([LONG_PAPER], index, embedder, chunker=chunker)
    chunk_count = first.records_written
    assert chunk_count > 2 and first.added == 1
    second = await index_documents([SHORT_PAPER], index, embedder, chunker=chunker)
    assert (second.updated, second.records_written, second.records_removed) == (1, 1, chunk_count)
    assert await index.children(["paper"]) != {}
    assert list((await index.children(["paper"]))["paper"]) == ["paper"]
    assert await index.count() == 1


async def test_id_repeated_in_a_later_batch_is_indexed_once_from_its_last_occurrence(
    tmp_path: Path, tokenizer: TextTokenizer
) -> None:
    # the long version is never written, so none of its chunks can survive
    embedder, index, chunker = await chunking(tmp_path, tokenizer)
    docs = [LONG_PAPER, SHORT_PAPER, Document("other", "another document")]
    report = await index_documents(docs, index, embedder, chunker=chunker, batch_size=1)
    assert (report.read, report.duplicates, report.added, report.updated) == (3, 1, 2, 0)
    assert report.records_written == 2
    assert list((await index.children(["paper"]))["paper"]) == ["paper"]
    assert await index.count() == 2


async def test_delete_removes_documents_with_all_their_chunks(
    tmp_path: Path, tokenizer: TextTokenizer
) -> None:
    embedder = FakeEmbedder(model_id="fake", max_tokens=64)
    index = await open_index(tmp_path, embedder)
    chunker = Chunker(tokenizer)
    docs = [Document("long", " ".join(f"w{i}" for i in range(200))), Document("keep", "keep me")]
    await index_documents(docs, index, embedder, chunker=chunker)
    report = await index_documents([], index, embedder, delete=["long", "unknown"])
    assert report.deleted == 1 and report.records_removed > 2
    assert report.generation == 2
    assert await index.count() == 1


async def test_dry_run_counts_and_writes_nothing(tmp_path: Path) -> None:
    embedder = FakeEmbedder(model_id="fake")
    index = await open_index(tmp_path, embedder)
    await index_documents([Document("a", "alpha"), Document("b", "beta")], index, embedder)
    calls = len(embedder.calls)
    plan = [Document("a", "alpha"), Document("b", "beta changed"), Document("c", "gamma")]
    report = await index_documents(plan, index, embedder, delete=["a"], dry_run=True)
    assert (report.added, report.updated, report.unchanged, report.deleted) == (1, 1, 1, 1)
    assert report.generation is None and report.dry_run
    assert len(embedder.calls) == calls and index.generation == 1
    new_collection = await index_documents(plan, NothingStaged("new"), embedder, dry_run=True)  # type: ignore[arg-type]
    assert new_collection.added == 3


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "d.jsonl",
            b'{"id": "1", "text": "ok"}\n{"id": "2", "text": "caf\xe9"}\n',
            "d.jsonl:2: not UTF-8",
        ),
        (
            "d.jsonl",
            b'{"id": "1", "text": "bad \\ud800 x"}\n',
            "d.jsonl:1: `text` holds a lone surrogate",
        ),
        ("d.jsonl", b'{"id": "1", "text": "t", "title": "\\udfff"}\n', "d.jsonl:1: `title` holds"),
        (
            "d.jsonl",
            b'{"id": "1", "text": "t", "metadata": {"k": ["\\ud800"]}}\n',
            "d.jsonl:1: `metadata` holds a lone",
        ),
        (
            "d.jsonl",
            b'{"id": "1", "text": "t", "metadata": {"x": NaN}}\n',
            "d.jsonl:1: `metadata` holds NaN",
        ),
        ("d.jsonl", b'{"id": "1", "text": "t", "metadata": {"x": {"y": -Infinity}}}\n', "Infinity"),
        ("d.jsonl", b'{"id": "1", "text": "t", "metadata": {"x": 1e999}}\n', "Infinity"),
        ("d.csv", b"id,text\n1,fine\n2,caf\xe9\n", "d.csv:3: not UTF-8 text (byte 0xe9"),
        ("d.csv", b"id,text,a,a\n1,x,y,z\n", "d.csv:1: column 'a' appears twice"),
    ],
)
def test_bad_input_is_refused_naming_the_line_and_field(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidInput, match=re.escape(message)):
        list(read_documents(path))


def test_csv_fields_may_be_larger_than_128_kib(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text(f"id,text\n1,{'x' * 200_000}\n2,small\n")
    assert [len(d.text) for d in read_documents(path)] == [200_000, 5]


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfid,text\n1,hi\n")
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"id": "1", "text": "hi"}\n')
    for name in ("bom.csv", "bom.jsonl"):
        assert list(read_documents(tmp_path / name)) == [Document("1", "hi")]


def test_an_empty_mapped_column_is_named_as_mapped(tmp_path: Path) -> None:
    path = tmp_path / "docs.csv"
    path.write_text("key,body\n1,first\n2,\n")
    with pytest.raises(InvalidInput, match=re.escape("docs.csv:3: `body` must be a non-empty")):
        list(read_documents(path, columns=CsvColumns(id="key", text="body")))
    path.write_text("key,body\n,first\n")
    with pytest.raises(InvalidInput, match=re.escape("docs.csv:2: `key` must be a non-empty")):
        list(read_documents(path, columns=CsvColumns(id="key", text="body")))


def test_a_path_that_does_not_fit_the_format_is_refused_before_reading(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "docs.jsonl").write_text('{"id": "1", "text": "x"}\n')
    cases: list[tuple[Path, InputFormat, str]] = [
        (tmp_path / "folder", "jsonl", "is a directory"),
        (tmp_path / "folder", "csv", "is a directory"),
        (tmp_path / "docs.jsonl", "dir", "is not a directory"),
    ]
    for path, fmt, message in cases:
        with pytest.raises(InvalidInput, match=message):
            read_documents(path, fmt)
        with pytest.raises(InvalidInput, match=message):
            count_documents(path, fmt)
