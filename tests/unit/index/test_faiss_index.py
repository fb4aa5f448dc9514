"""FAISS + SQLite document store: round trips, generations, atomic publication, crashes."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.errors import InvalidInput, NotFound, SemsearchError
from app.index.base import VectorIndex
from app.index.faiss.generation import Generation
from app.index.faiss.index import FaissIndex
from app.index.faiss.layout import KEEP_GENERATIONS, CollectionLayout
from app.models.fake import FakeEmbedder
from app.types import Document, Hit, InputType, content_hash
from tests.conftest import SMALL_DOCS, build_collection, faiss_options


async def vectors(embedder: FakeEmbedder, docs: list[Document]) -> np.ndarray:
    return (await embedder.embed([d.passage for d in docs], InputType.PASSAGE)).vectors


async def test_round_trip_returns_texts_metadata_and_exact_scores(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    index = await build_collection(tmp_path, "docs", SMALL_DOCS, fake_embedder)
    assert isinstance(index, VectorIndex)
    query = (await fake_embedder.embed(["Paris France capital"], InputType.QUERY)).vectors
    hits = (await index.search(query, 3)).hits[0]

    assert hits[0].id == "paris"
    assert hits[0].title == "Paris"
    assert hits[0].text == SMALL_DOCS[1].text
    assert hits[0].metadata == {"lang": "en", "topic": "city"}
    doc_vec = (await vectors(fake_embedder, [SMALL_DOCS[1]]))[0]
    assert hits[0].score == pytest.approx(float(doc_vec @ query[0]), abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert await index.count() == len(SMALL_DOCS)
    assert (await index.search(query, 100)).hits[0].__len__() == len(SMALL_DOCS)


async def test_persisted_on_disk_and_reopened_by_another_reader(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    writer = await build_collection(tmp_path, "docs", SMALL_DOCS, fake_embedder)
    await writer.close()
    reader = await FaissIndex.open(tmp_path, "docs", faiss_options())
    assert reader.generation == 1
    assert reader.model_id == "fake-embedder"
    assert reader.dimension == fake_embedder.info.dimension
    query = (await fake_embedder.embed(["memory safety"], InputType.QUERY)).vectors
    assert (await reader.search(query, 1)).hits[0][0].id == "rust"


async def test_batch_queries_come_back_in_order(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    index = await build_collection(tmp_path, "docs", SMALL_DOCS, fake_embedder)
    queries = (await fake_embedder.embed(["cats purr", "Berlin Germany"], InputType.QUERY)).vectors
    results = (await index.search(queries, 1)).hits
    assert [r[0].id for r in results] == ["cats", "berlin"]


async def test_writes_are_invisible_until_published(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    index = await build_collection(tmp_path, "docs", SMALL_DOCS[:2], fake_embedder)
    extra = [SMALL_DOCS[2]]
    await index.upsert(extra, await vectors(fake_embedder, extra))
    query = (await fake_embedder.embed(["cats purr"], InputType.QUERY)).vectors
    assert "cats" not in [h.id for h in (await index.search(query, 5)).hits[0]]
    assert await index.publish() == 2
    assert (await index.search(query, 1)).hits[0][0].id == "cats"


async def test_publish_without_changes_makes_no_generation(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    index = await build_collection(tmp_path, "docs", SMALL_DOCS, fake_embedder)
    assert await index.publish() is None
    assert await index.delete(["not-there"]) == 0
    assert await index.publish() is None
    assert index.generation == 1


async def test_delete_removes_from_the_next_generation(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    index = await build_collection(tmp_path, "docs", SMALL_DOCS, fake_embedder)
    assert await index.delete(["cats", "missing"]) == 1
    assert await index.publish() == 2
    query = (await fake_embedder.embed(["cats purr"], InputType.QUERY)).vectors
    assert "cats" not in [h.id for h in (await index.search(query, 10)).hits[0]]
    assert await index.count() == len(SMALL_DOCS) - 1


async def test_non_finite_metadata_is_refused_so_filters_keep_working(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    index = await build_collection(tmp_path, "docs", SMALL_DOCS, fake_embedder)
    bad = [Document("nan", "not a number", "", {"topic": "city", "x": float("nan")})]
    with pytest.raises(InvalidInput, match="NaN or Infinity"):
        await index.upsert(bad, await vectors(fake_embedder, bad))
    assert await index.publish() is None  # nothing was staged
    query = (await fake_embedder.embed(["capital"], InputType.QUERY)).vectors
    hits = (await index.search(query, 10, {"topic": "city"})).hits[0]
    assert sorted(h.id for h in hits) == ["berlin", "paris"]


async def test_update_keeps_one_copy_per_id(tmp_path: Path, fake_embedder: FakeEmbedder) -> None:
    index = await build_collection(tmp_path, "docs", SMALL_DOCS, fake_embedder)
    changed = [Document("cats", "Dogs bark at the mail carrier.", "Dogs")]
    await index.upsert(changed, await vectors(fake_embedder, changed))
    await index.publish()
    query = (await fake_embedder.embed(["dogs bark"], InputType.QUERY)).vectors
    hits = (await index.search(query, 10)).hits[0]
    assert [h.id for h in hits].count("cats") == 1
    assert hits[0].id == "cats"
    assert hits[0].title == "Dogs"
    assert await index.children(["cats"]) == {"cats": {"cats": content_hash(changed[0])}}


async def test_reader_picks_up_a_generation_published_elsewhere(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    writer = await build_collection(tmp_path, "docs", SMALL_DOCS[:2], fake_embedder)
    reader = await FaissIndex.open(tmp_path, "docs", faiss_options())
    assert await reader.reload() is False
    await writer.upsert(SMALL_DOCS[2:], await vectors(fake_embedder, SMALL_DOCS[2:]))
    await writer.publish()
    assert reader.generation == 1
    assert await reader.reload() is True
    assert reader.generation == 2
    assert await reader.count() == len(SMALL_DOCS)


async def test_crash_before_publish_leaves_the_old_generation_and_is_published_next_run(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    index = await build_collection(tmp_path, "docs", SMALL_DOCS[:2], fake_embedder)
    await index.upsert(SMALL_DOCS[2:], await vectors(fake_embedder, SMALL_DOCS[2:]))
    layout = CollectionLayout(tmp_path, "docs")
    # the process dies here: writes are committed to the store, nothing was published
    await index.close()
    stale = layout.generations_dir / ".tmp-gen-000002-999"
    stale.mkdir()
    (stale / "index.faiss").write_bytes(b"half written")

    reader = await FaissIndex.open(tmp_path, "docs", faiss_options())
    assert reader.generation == 1
    assert await reader.count() == 2

    rerun = await FaissIndex.create(
        tmp_path, "docs", "fake-embedder", fake_embedder.info.dimension or 0, faiss_options()
    )
    # every document is already staged, so a re-run embeds nothing, yet publishes what is staged
    assert set(await rerun.children([d.id for d in SMALL_DOCS])) == {d.id for d in SMALL_DOCS}
    assert await rerun.publish() == 2
    assert not stale.exists()
    assert await rerun.count() == len(SMALL_DOCS)


async def test_current_pointer_is_swapped_atomically_and_old_generations_pruned(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    index = await build_collection(tmp_path, "docs", SMALL_DOCS[:1], fake_embedder)
    layout = CollectionLayout(tmp_path, "docs")
    for doc in SMALL_DOCS[1:]:
        await index.upsert([doc], await vectors(fake_embedder, [doc]))
        await index.publish()
    assert layout.current_path.read_text() == "gen-000005\n"
    kept = sorted(p.name for p in layout.generations_dir.iterdir())
    assert kept == [f"gen-{n:06d}" for n in range(6 - KEEP_GENERATIONS, 6)]
    assert not [p for p in layout.root.iterdir() if ".tmp" in p.name]


async def test_second_writer_is_refused(tmp_path: Path, fake_embedder: FakeEmbedder) -> None:
    first = await build_collection(tmp_path, "docs", SMALL_DOCS[:1], fake_embedder)
    await first.children(["x"])  # holds the writer lock until closed
    second = await FaissIndex.open(tmp_path, "docs", faiss_options())
    with pytest.raises(SemsearchError, match="another process"):
        await second.children(["x"])
    await first.close()
    assert await second.children(["berlin"]) == {"berlin": {"berlin": content_hash(SMALL_DOCS[0])}}


async def test_read_only_sees_what_is_staged_keeps_writers_out_and_writes_nothing(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    writer = await build_collection(tmp_path, "docs", SMALL_DOCS[:2], fake_embedder)
    await writer.children(["x"])  # holds the writer lock until closed
    reader = await FaissIndex.open(tmp_path, "docs", faiss_options(), read_only=True)
    with pytest.raises(SemsearchError, match="another process"):
        await reader.children(["berlin"])
    await writer.close()
    files = sorted(p.name for p in (tmp_path / "docs").iterdir())
    assert await reader.children(["berlin"]) == {"berlin": {"berlin": content_hash(SMALL_DOCS[0])}}
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == files  # no -wal/-shm
    with pytest.raises(SemsearchError, match="another process"):
        await (await FaissIndex.open(tmp_path, "docs", faiss_options())).children(
            ["x"]
        )  # readers keep it
    with pytest.raises(SemsearchError, match="read-only"):
        await reader.delete(["berlin"])
    await reader.close()


async def test_other_model_or_bad_names_are_refused(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    await build_collection(tmp_path, "docs", SMALL_DOCS[:1], fake_embedder)
    with pytest.raises(InvalidInput, match="holds vectors of 'fake-embedder'"):
        await FaissIndex.create(tmp_path, "docs", "another-model", 64, faiss_options())
    with pytest.raises(NotFound):
        await FaissIndex.open(tmp_path, "nothing-here", faiss_options())
    for bad in ("../up", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(InvalidInput):
            await FaissIndex.open(tmp_path, bad, faiss_options())


async def test_wrong_query_dimension_is_an_error_not_a_crash(
    tmp_path: Path, fake_embedder: FakeEmbedder
) -> None:
    index = await build_collection(tmp_path, "docs", SMALL_DOCS, fake_embedder)
    with pytest.raises(InvalidInput, match="-d"):
        await index.search(np.ones((1, 3), dtype=np.float32), 2)


def test_atomic_write_never_leaves_a_partial_file(tmp_path: Path) -> None:
    from app.index.faiss.layout import atomic_write_text

    target = tmp_path / "CURRENT"
    atomic_write_text(target, "gen-000001\n")
    atomic_write_text(target, "gen-000002\n")
    assert target.read_text() == "gen-000002\n"
    assert os.listdir(tmp_path) == ["CURRENT"]


async def test_a_lone_querys_search_moves_onto_the_event_loop_other_searches_stay_in_threads(
    tmp_path: Path, fake_embedder: FakeEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """See app/index/offload.py: a lone unfiltered query's (short) search runs on the loop
    once measured; a filter (its matches may need a scan of the store), a batch, and the
    first search of a new generation go to a thread."""
    ran_on: list[str] = []
    loop_thread = threading.get_ident()
    for name in ("search", "lexical_search"):
        original = getattr(Generation, name)

        def recorded(self: Generation, *args: Any, _original: Any = original) -> Any:
            ran_on.append("loop" if threading.get_ident() == loop_thread else "thread")
            return _original(self, *args)

        monkeypatch.setattr(Generation, name, recorded)
    index = await build_collection(tmp_path, "docs", SMALL_DOCS[:4], fake_embedder)
    query = (await fake_embedder.embed(["cats purr"], InputType.QUERY)).vectors

    async def where(search: Any) -> str:
        await search
        return ran_on[-1]

    assert [await where(index.search(query, 3)) for _ in range(2)] == ["thread", "loop"]
    assert [await where(index.lexical_search(["cats"], 3)) for _ in range(2)] == [
        "thread",
        "loop",
    ]
    assert await where(index.search(query, 3, {"lang": "en"})) == "thread"
    assert await where(index.lexical_search(["cats"], 3, {"lang": "en"})) == "thread"
    assert await where(index.search(np.vstack([query, query]), 3)) == "thread"
    extra = [SMALL_DOCS[4]]
    await index.upsert(extra, await vectors(fake_embedder, extra))
    await index.publish()
    assert [await where(index.search(query, 3)) for _ in range(2)] == ["thread", "loop"]


async def test_rows_read_once_are_kept_up_to_a_bound_and_answer_alike(
    tmp_path: Path, fake_embedder: FakeEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generation keeps the rows it read in memory (it never changes), up to a bound; rows
    past it are read from the store each time. Either way a search answers the same."""
    import app.index.faiss.generation as generation_module

    index = await build_collection(tmp_path, "docs", SMALL_DOCS, fake_embedder)
    query = (await fake_embedder.embed(["Paris France capital"], InputType.QUERY)).vectors
    first = (await index.search(query, len(SMALL_DOCS))).hits[0]
    generation = index._generation
    assert generation is not None
    assert len(generation._rows) == len(SMALL_DOCS)
    second = (await index.search(query, len(SMALL_DOCS))).hits[0]
    assert second == first
    # kept rows are shared between searches' hits: nothing may write into their metadata
    assert all(a.metadata is b.metadata for a, b in zip(first, second, strict=True))

    # a later generation, with the bound already passed: nothing more is kept
    monkeypatch.setattr(generation_module, "_ROWS_KEPT_BYTES", 1)
    extra = [SMALL_DOCS[0]]
    await index.upsert(extra, await vectors(fake_embedder, extra))
    await index.publish()
    again = (await index.search(query, len(SMALL_DOCS))).hits[0]
    assert index._generation is not generation
    assert index._generation is not None and len(index._generation._rows) == 0

    def rows(hits: list[Hit]) -> list[tuple[str, str, str, dict[str, Any]]]:
        return sorted((h.id, h.text, h.title, h.metadata) for h in hits)

    assert rows(again) == rows(first)
    assert sorted(h.score for h in again) == pytest.approx(sorted(h.score for h in first))


async def test_kept_rows_share_one_bound_across_collections_and_dropped_generations_free_it(
    tmp_path: Path, fake_embedder: FakeEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound on kept rows is the process's, not each collection's: a gateway serving many
    collections holds no more. A generation replaced by a newer one gives its share back."""
    import gc

    import app.index.faiss.generation as generation_module

    one = await build_collection(tmp_path, "one", SMALL_DOCS, fake_embedder)
    two = await build_collection(tmp_path, "two", SMALL_DOCS, fake_embedder)
    query = (await fake_embedder.embed(["Paris France capital"], InputType.QUERY)).vectors
    gc.collect()  # generations of earlier tests give their share back now, not mid-test
    kept = generation_module._KEPT
    monkeypatch.setattr(generation_module, "_ROWS_KEPT_BYTES", kept.bytes + 1)

    def kept_rows(index: FaissIndex) -> int:
        assert index._generation is not None
        return len(index._generation._rows)

    await one.search(query, len(SMALL_DOCS))
    assert kept_rows(one) == 1  # the first row read passes the bound
    await two.search(query, len(SMALL_DOCS))
    assert kept_rows(two) == 0  # the bound is shared: the other collection used it

    held = kept.bytes
    extra = [SMALL_DOCS[0]]
    await one.upsert(extra, await vectors(fake_embedder, extra))
    await one.publish()  # the generation holding the row is dropped
    gc.collect()
    assert kept.bytes < held
    await two.search(query, len(SMALL_DOCS))
    assert kept_rows(two) == 1
