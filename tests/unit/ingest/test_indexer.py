"""Batch indexing: JSONL reading, idempotent re-runs, changed texts, resumption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.errors import InvalidInput
from app.index.faiss.index import FaissIndex
from app.ingest.indexer import index_documents
from app.ingest.readers import count_documents, read_jsonl
from app.models.fake import FakeEmbedder
from app.types import Document, InputType, Truncate
from tests.conftest import SMALL_DOCS, faiss_options


async def open_index(tmp_path: Path, embedder: FakeEmbedder) -> FaissIndex:
    return await FaissIndex.create(
        tmp_path, "docs", embedder.info.model_id, embedder.info.dimension or 0, faiss_options()
    )


def passages_embedded(embedder: FakeEmbedder) -> int:
    return sum(len(texts) for texts, kind in embedder.calls if kind is InputType.PASSAGE)


async def test_first_run_adds_everything_and_publishes(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    index = await open_index(tmp_path, fake_embedder)
    seen: list[int] = []
    report = await index_documents(
        SMALL_DOCS, index, fake_embedder, batch_size=2, on_batch=seen.append
    )
    assert (report.read, report.added, report.updated, report.unchanged) == (5, 5, 0, 0)
    assert report.generation == 1
    assert seen == [2, 2, 1]
    assert passages_embedded(fake_embedder) == 5


async def test_rerun_on_same_input_changes_nothing(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    index = await open_index(tmp_path, fake_embedder)
    await index_documents(SMALL_DOCS, index, fake_embedder)
    before = passages_embedded(fake_embedder)
    report = await index_documents(SMALL_DOCS, index, fake_embedder)
    assert (report.added, report.updated, report.unchanged) == (0, 0, 5)
    assert report.generation is None
    assert index.generation == 1
    assert passages_embedded(fake_embedder) == before  # nothing re-embedded


async def test_changed_text_is_re_embedded_and_replaced(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    index = await open_index(tmp_path, fake_embedder)
    await index_documents(SMALL_DOCS, index, fake_embedder)
    before = passages_embedded(fake_embedder)
    changed = [*SMALL_DOCS[:4], Document("python", "Python snakes are constrictors.", "")]
    report = await index_documents(changed, index, fake_embedder)
    assert (report.added, report.updated, report.unchanged) == (0, 1, 4)
    assert passages_embedded(fake_embedder) == before + 1
    assert report.generation == 2
    query = (await fake_embedder.embed(["constrictors snakes"], InputType.QUERY)).vectors
    hits = (await index.search(query, 5)).hits[0]
    assert hits[0].id == "python"
    assert "constrictors" in hits[0].text
    assert [h.id for h in hits].count("python") == 1


async def test_interrupted_run_resumes_without_redoing_committed_batches(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    class Killed(Exception):
        """Stands in for the process dying (the real SIGKILL is in tests/integration)."""

    class DiesAfterTwoBatches(FakeEmbedder):
        async def embed(self, texts, input_type, truncate=Truncate.NONE):  # type: ignore[no-untyped-def]
            if len(self.calls) == 2:
                raise Killed
            return await super().embed(texts, input_type, truncate)

    dying = DiesAfterTwoBatches(model_id="fake-embedder")
    index = await open_index(tmp_path, dying)
    with pytest.raises(Killed):
        await index_documents(SMALL_DOCS, index, dying, batch_size=2)
    assert index.generation == 0  # nothing published yet
    await index.close()

    index = await open_index(tmp_path, fake_embedder)
    report = await index_documents(SMALL_DOCS, index, fake_embedder, batch_size=2)
    assert (report.added, report.unchanged) == (1, 4)  # two batches were already committed
    assert passages_embedded(fake_embedder) == 1
    assert report.generation == 1
    assert await index.count() == 5


async def test_duplicate_ids_in_one_batch_keep_the_last(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    index = await open_index(tmp_path, fake_embedder)
    docs = [Document("a", "first version"), Document("a", "second version")]
    await index_documents(docs, index, fake_embedder)
    assert await index.count() == 1
    query = (await fake_embedder.embed(["second version"], InputType.QUERY)).vectors
    assert (await index.search(query, 1)).hits[0][0].text == "second version"


async def test_an_id_repeated_across_batches_keeps_the_last_and_re_runs_change_nothing(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    index = await open_index(tmp_path, fake_embedder)
    docs = [Document("a", "first version"), Document("b", "beta"), Document("a", "second")]
    seen: list[int] = []
    first = await index_documents(docs, index, fake_embedder, batch_size=2, on_batch=seen.append)
    assert (first.read, first.duplicates, first.added, first.updated) == (3, 1, 2, 0)
    assert sum(seen) == 3  # progress counts the ignored copy too
    # every document read is accounted for (the report has no count nothing fills)
    assert first.read == first.added + first.updated + first.unchanged + first.duplicates
    assert first.generation == 1
    embedded = passages_embedded(fake_embedder)
    for _ in range(2):
        again = await index_documents(docs, index, fake_embedder, batch_size=2)
        assert (again.duplicates, again.unchanged, again.updated) == (1, 2, 0)
        assert again.generation is None
    assert passages_embedded(fake_embedder) == embedded
    query = (await fake_embedder.embed(["second"], InputType.QUERY)).vectors
    assert [h.text for h in (await index.search(query, 5)).hits[0] if h.id == "a"] == ["second"]


async def test_a_one_shot_iterator_is_read_once(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    index = await open_index(tmp_path, fake_embedder)
    report = await index_documents(iter(SMALL_DOCS), index, fake_embedder, batch_size=2)
    assert (report.read, report.added) == (5, 5)


async def test_long_passages_are_truncated_on_request_not_refused(
    tmp_path: Path,
) -> None:
    embedder = FakeEmbedder(model_id="small-window", max_tokens=4)
    index = await open_index(tmp_path, embedder)
    report = await index_documents(
        [Document("long", "one two three four five six")], index, embedder
    )
    assert report.added == 1


def test_jsonl_reader_accepts_ids_titles_metadata_and_beir_ids(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(
        json.dumps({"id": "a", "text": "alpha", "title": "A", "metadata": {"k": 1}})
        + "\n\n"
        + json.dumps({"_id": 7, "text": "beta"})
        + "\n"
    )
    docs = list(read_jsonl(path))
    assert docs == [Document("a", "alpha", "A", {"k": 1}), Document("7", "beta", "", {})]
    assert count_documents(path) == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"text": "no id"}', "`id`"),
        ('{"id": "x"}', "`text`"),
        ('{"id": "x", "text": "   "}', "`text`"),
        ('{"id": "x", "text": "t", "metadata": [1]}', "`metadata`"),
        ('{"id": true, "text": "t"}', "`id`"),
    ],
)
def test_jsonl_reader_names_the_bad_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": "ok", "text": "fine"}\n' + line + "\n")
    with pytest.raises(InvalidInput, match=message) as raised:
        list(read_jsonl(path))
    assert "docs.jsonl:2" in raised.value.message
