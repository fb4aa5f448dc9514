"""Answers are documents: chunks grouped, pages cut from one ranking, a score floor, diversity,
snippets. Unit cases on rankings, then the pipeline over a chunked collection."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import GatewaySettings
from app.index.collections import Collections
from app.index.faiss.index import FaissIndex
from app.ingest.chunking import Chunker
from app.ingest.indexer import index_documents
from app.models.fake import FakeEmbedder, FakeReranker
from app.search import shaping
from app.search.cache import LRUCache, SafeCache
from app.search.config import Guards, PipelineConfig
from app.search.pipeline import SearchPipeline
from app.types import Document, GroupBy, Hit, RankedHit, SearchQuery
from tests.conftest import faiss_options


def ranked(*ids: str) -> list[RankedHit]:
    """Chunks in rank order, scored 1.0, 0.9, ...; `a#1` belongs to document `a`."""
    out = []
    for rank, record in enumerate(ids, start=1):
        parent = record.split("#")[0]
        metadata = {"parent_id": parent} if "#" in record else {}
        hit = Hit(record, 1.1 - rank / 10, f"text of {record}", parent.upper(), metadata)
        out.append(RankedHit(hit, rank, hit.score, None))
    return out


def test_chunks_of_a_document_become_one_result_at_its_best_chunks_place() -> None:
    documents = shaping.by_document(ranked("a#2", "b", "a#0", "c#1", "a#1", "c#0"))
    assert [(d.document_id, d.rank) for d in documents] == [("a", 1), ("b", 2), ("c", 3)]
    first = documents[0]
    assert first.hit.id == "a#2" and first.score == pytest.approx(1.0)  # its best chunk's
    assert [(c.id, c.rank) for c in first.chunks] == [("a#2", 1), ("a#0", 3), ("a#1", 5)]
    assert [c.id for c in documents[2].chunks] == ["c#1", "c#0"]
    chunks = shaping.by_chunk(ranked("a#2", "b"))
    assert [c.chunks[0].id for c in chunks] == ["a#2", "b"]


def test_pages_have_no_repeats_and_no_gaps() -> None:
    items = shaping.by_document(ranked(*[f"d{i}" for i in range(23)]))
    seen, offset = [], 0
    while offset is not None:
        page, offset = shaping.page(items, offset, 5)
        seen += [p.document_id for p in page]
    assert seen == [f"d{i}" for i in range(23)]
    assert shaping.page(items, 40, 5) == ([], None)


def test_a_floor_drops_weak_results() -> None:
    items = ranked("a", "b", "c", "d")
    assert [i.hit.id for i in shaping.at_least(items, 0.85)] == ["a", "b"]
    assert shaping.at_least(items, None) == items


def test_diversity_moves_near_duplicates_down() -> None:
    hits = [
        Hit("x1", 0.9, "aspirin lowers stroke risk in adults"),
        Hit("x2", 0.89, "aspirin lowers stroke risk in adults too"),
        Hit("y", 0.7, "statins reduce cholesterol levels"),
    ]
    items = [RankedHit(h, i, h.score, None) for i, h in enumerate(hits, start=1)]
    assert [i.hit.id for i in shaping.diversify(items, 0.0, 10)] == ["x1", "x2", "y"]
    spread = shaping.diversify(items, 0.7, 10)
    assert [i.hit.id for i in spread] == ["x1", "y", "x2"]
    assert [i.rank for i in spread] == [1, 2, 3]


LONG = " ".join(
    f"Sentence {i} of the long paper about glaciers and moraines in the Alps." for i in range(40)
)
DOCS = [
    Document("paper", LONG, "Glaciers"),
    Document("note", "A short note on glaciers.", "Note"),
    *(
        Document(f"other{i}", f"Unrelated text number {i} about cooking pasta.", "")
        for i in range(30)
    ),
]


@pytest.fixture
async def chunked(tmp_path: Path) -> Path:
    embedder = FakeEmbedder(model_id="fake-embedder")
    index = await FaissIndex.create(
        tmp_path, "default", "fake-embedder", embedder.info.dimension or 0, faiss_options()
    )
    chunker = Chunker.for_model(embedder.info, max_tokens=30, overlap=5)
    await index_documents(DOCS, index, embedder, chunker=chunker, batch_size=8)
    await index.close()
    return tmp_path


async def pipeline_over(index_dir: Path) -> SearchPipeline:
    settings = GatewaySettings(index_dir=index_dir)
    pipeline = SearchPipeline(
        embedder=FakeEmbedder(model_id="fake-embedder"),
        reranker=FakeReranker(model_id="fake-reranker"),
        collections=Collections.from_settings(settings),
        cache=SafeCache(LRUCache(100), 1.0),
        config=PipelineConfig.from_settings(settings),
        guards=Guards.from_settings(settings),
        default_collection="default",
    )
    await pipeline.start()
    await pipeline.wait_ready()
    return pipeline


def q(text: str = "glaciers moraines", **kwargs: object) -> SearchQuery:
    fields: dict[str, object] = {"collection": "default", "top_k": 3, "candidates": 20}
    fields.update(kwargs)
    return SearchQuery(query=text, **fields)  # type: ignore[arg-type]


async def test_a_long_document_is_one_result_with_its_matching_chunks(chunked: Path) -> None:
    pipeline = await pipeline_over(chunked)
    result = await pipeline.search(q())
    ids = [r.document_id for r in result.results]
    assert len(ids) == len(set(ids)) == 3 and ids[0] == "paper"
    paper = result.results[0]
    assert len(paper.chunks) > 1 and all(c.id.startswith("paper#") for c in paper.chunks)
    assert paper.hit.id == paper.chunks[0].id  # it carries its best chunk's text
    assert paper.snippet is not None and paper.snippet.highlights
    assert {paper.snippet.text[s:e].lower() for s, e in paper.snippet.highlights} <= {
        "glaciers",
        "moraines",
    }
    chunks = await pipeline.search(q(group_by=GroupBy.CHUNK))
    assert [r.document_id for r in chunks.results].count("paper") >= 2  # today's answer


async def test_top_k_counts_documents_even_when_chunks_of_one_fill_the_candidates(
    chunked: Path,
) -> None:
    pipeline = await pipeline_over(chunked)
    result = await pipeline.search(q(top_k=5, candidates=5))
    assert len({r.document_id for r in result.results}) == 5  # fetched more to fill it


async def test_pages_within_a_generation_have_no_repeats_or_gaps(chunked: Path) -> None:
    pipeline = await pipeline_over(chunked)
    seen: list[str] = []
    offset: int | None = 0
    generation = None
    while offset is not None:
        page = await pipeline.search(
            q("glaciers pasta", top_k=4, candidates=100, offset=offset, generation=generation)
        )
        assert not page.generation_changed
        assert [r.rank for r in page.results] == list(range(offset + 1, offset + 5))[
            : len(page.results)
        ]  # the ranks run on from the previous page: nothing skipped
        seen += [r.document_id for r in page.results]
        offset, generation = page.next_offset, page.generation
    # nothing twice, and every document once (100 candidates hold all the chunks)
    assert len(seen) == len(set(seen)) == len(DOCS)


async def test_a_page_of_an_older_generation_says_it_changed(chunked: Path) -> None:
    pipeline = await pipeline_over(chunked)
    page = await pipeline.search(q(offset=3, generation=0))
    assert page.generation_changed and page.generation == 1


async def test_min_score_drops_results_below_it(chunked: Path) -> None:
    pipeline = await pipeline_over(chunked)
    everything = await pipeline.search(q(top_k=10, rerank=False))
    floor = everything.results[2].score
    kept = await pipeline.search(q(top_k=10, rerank=False, min_score=floor))
    assert [r.document_id for r in kept.results] == [
        r.document_id for r in everything.results if r.score >= floor
    ]
    assert all(r.score >= floor for r in kept.results)


async def test_a_larger_fetch_without_a_query_vector_stays_lexical(chunked: Path) -> None:
    """Dense asked for, the embedder down: the words answer, also when more are fetched."""
    from app.errors import Unavailable
    from app.types import SearchMode

    class Down(FakeEmbedder):
        async def embed(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            raise Unavailable("connection refused")

    pipeline = await pipeline_over(chunked)
    pipeline.embedder = Down(model_id="fake-embedder")
    result = await pipeline.search(q("glaciers", top_k=5, candidates=5, mode=SearchMode.DENSE))
    assert result.degraded[0] == "embedder" and result.mode is SearchMode.LEXICAL
    assert len({r.document_id for r in result.results}) == 2  # fetched more: both documents
