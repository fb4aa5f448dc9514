"""The same cases against every VectorIndex backend, and the backends against each other.

FAISS (flat, exact), Qdrant (embedded local mode, exact search) and a FallbackIndex (Qdrant
primary, FAISS fallback, as in the compose stack) must agree: same top ids, scores within a
tolerance, same filter semantics, same write semantics. With QDRANT_URL set the Qdrant cases
also run against that server.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import models

from app.breaker import BreakerPolicy, CircuitBreaker
from app.config import GatewaySettings
from app.errors import IndexUnavailable, InvalidInput
from app.index.base import Collection, VectorIndex
from app.index.faiss.index import FaissIndex
from app.index.fallback import FallbackIndex
from app.index.qdrant.connection import META_KEY, QdrantOptions, clients, read_meta
from app.index.qdrant.index import QdrantIndex
from app.types import Document, Filter, content_hash
from tests.conftest import faiss_options, qdrant_options

DIM = 32
BACKENDS = ["faiss", "qdrant-local", "fallback"]
if os.environ.get("QDRANT_URL"):
    BACKENDS.append("qdrant-server")

Factory = Callable[[str], Awaitable[VectorIndex]]


def corpus(n: int = 200, seed: int = 0) -> tuple[list[Document], np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    langs = ["en", "de", "fr"]
    docs = [
        Document(
            id=f"d{i}",
            text=f"text {i}",
            title=f"title {i}",
            metadata={
                "lang": langs[i % 3],
                "year": 2000 + i % 10,
                "score": (i % 4) / 2,
                "public": i % 2 == 0,
                "tags": [f"t{i % 5}", f"t{(i + 1) % 5}"],
                "half": i % 2,  # the numbers 0 and 1, not booleans
                "code": str(i % 3),
                "nested": {"lang": langs[i % 3]},
            },
        )
        for i in range(n)
    ]
    return docs, vectors


@pytest.fixture(params=BACKENDS)
async def make_index(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Factory]:
    opened: list[VectorIndex] = []

    async def make(name: str) -> VectorIndex:
        index: VectorIndex
        if request.param == "faiss":
            index = await FaissIndex.create(tmp_path / "faiss", name, "m", DIM, faiss_options())
        elif request.param == "qdrant-local":
            options = qdrant_options(qdrant_path=tmp_path / "qdrant", qdrant_exact=True)
            index = await QdrantIndex.create(options, name, "m", DIM)
        elif request.param == "fallback":
            options = qdrant_options(qdrant_path=tmp_path / "qdrant", qdrant_exact=True)
            index = FallbackIndex(
                await QdrantIndex.create(options, name, "m", DIM),
                await FaissIndex.create(tmp_path / "faiss", name, "m", DIM, faiss_options()),
                CircuitBreaker(f"index:{name}", BreakerPolicy.from_settings(GatewaySettings())),
                primary_timeout_s=5.0,
            )
        else:
            options = qdrant_options(qdrant_url=os.environ["QDRANT_URL"], qdrant_exact=True)
            index = await QdrantIndex.create(options, f"{name}-{uuid.uuid4().hex[:8]}", "m", DIM)
        opened.append(index)
        return index

    yield make
    for index in opened:
        await index.close()


async def filled(make: Factory, n: int = 200) -> tuple[VectorIndex, list[Document], np.ndarray]:
    docs, vectors = corpus(n)
    index = await make("docs")
    await index.upsert(docs, vectors)
    assert await index.publish() == 1
    return index, docs, vectors


def brute_force(
    vectors: np.ndarray, query: np.ndarray, k: int, allowed: list[int] | None = None
) -> list[int]:
    scores = vectors @ query
    rows = (
        np.argsort(-scores, kind="stable")
        if allowed is None
        else sorted(allowed, key=lambda i: -scores[i])
    )
    return list(rows[:k])


async def test_search_is_exact_nearest_neighbours(make_index: Factory) -> None:
    index, docs, vectors = await filled(make_index)
    queries = corpus(5, seed=1)[1]
    result = await index.search(queries, 10)
    assert result.generation == 1 and not result.degraded
    for query, hits in zip(queries, result.hits, strict=True):
        expected = brute_force(vectors, query, 10)
        assert [h.id for h in hits] == [docs[i].id for i in expected]
        np.testing.assert_allclose([h.score for h in hits], vectors[expected] @ query, atol=1e-5)
    top = result.hits[0][0]
    assert top.title.startswith("title ") and top.text.startswith("text ")
    assert set(top.metadata) == {
        "lang",
        "year",
        "score",
        "public",
        "tags",
        "half",
        "code",
        "nested",
    }
    assert await index.count() == 200


@pytest.mark.parametrize(
    ("filter", "keep"),
    [
        ({"lang": "de"}, lambda d: d.metadata["lang"] == "de"),
        ({"lang": ["de", "fr"]}, lambda d: d.metadata["lang"] in ("de", "fr")),
        ({"public": True}, lambda d: d.metadata["public"] is True),
        ({"year": 2003}, lambda d: d.metadata["year"] == 2003),
        ({"score": 0.5}, lambda d: d.metadata["score"] == 0.5),
        ({"tags": "t2"}, lambda d: "t2" in d.metadata["tags"]),
        (
            {"lang": "en", "year": [2000, 2003, 2006]},
            lambda d: d.metadata["lang"] == "en" and d.metadata["year"] in (2000, 2003, 2006),
        ),
        ({"lang": "xx"}, lambda d: False),
        # JSON types: true/false are not the numbers 1/0, numbers are not numeric strings
        ({"public": 1}, lambda d: False),
        ({"public": [0, "true"]}, lambda d: False),
        ({"half": True}, lambda d: False),
        ({"half": False}, lambda d: False),
        ({"half": 1}, lambda d: d.metadata["half"] == 1),
        ({"half": [1.0, "0"]}, lambda d: d.metadata["half"] == 1),
        ({"half": [True, 0]}, lambda d: d.metadata["half"] == 0),
        ({"code": 1}, lambda d: False),
        ({"code": ["1", 2]}, lambda d: d.metadata["code"] == "1"),
        ({"score": [0.5, "1.0"]}, lambda d: d.metadata["score"] == 0.5),
        # an object's members are not its values
        ({"nested": "de"}, lambda d: False),
    ],
)
async def test_filters_mean_the_same_everywhere(
    make_index: Factory, filter: Filter, keep: Callable[[Document], bool]
) -> None:
    index, docs, vectors = await filled(make_index)
    query = corpus(1, seed=2)[1]
    allowed = [i for i, d in enumerate(docs) if keep(d)]
    hits = (await index.search(query, 10, filter)).hits[0]
    assert [h.id for h in hits] == [docs[i].id for i in brute_force(vectors, query[0], 10, allowed)]
    assert len(hits) == min(10, len(allowed))  # k results whenever k match


async def test_writes_children_updates_and_deletes(make_index: Factory) -> None:
    index, _docs, vectors = await filled(make_index, n=20)
    chunks = [
        Document(f"long#{i}", f"part {i}", "Long", {"lang": "en"}, parent="long") for i in range(3)
    ]
    await index.upsert(chunks, vectors[:3])
    changed = Document("d5", "new text", "new title", {"lang": "de"})
    await index.upsert([changed], vectors[5:6])
    children = await index.children(["long", "d5", "nope"])
    assert children == {
        "long": {c.id: content_hash(c) for c in chunks},
        "d5": {"d5": content_hash(changed)},
    }
    assert await index.delete(["long#2", "missing"]) == 1
    assert await index.publish() == 2
    assert await index.publish() is None  # nothing new
    assert await index.count() == 22
    hits = (await index.search(vectors[5:6], 1)).hits[0]
    assert hits[0].id == "d5" and hits[0].text == "new text"
    assert "long#2" not in (await index.children(["long"]))["long"]


async def test_wrong_dimension_is_refused(make_index: Factory) -> None:
    index, _, _ = await filled(make_index, n=5)
    with pytest.raises(InvalidInput):
        await index.search(np.ones((1, DIM + 1), np.float32), 3)


async def test_faiss_and_qdrant_agree(tmp_path: Path) -> None:
    docs, vectors = corpus(300, seed=3)
    faiss_index = await FaissIndex.create(tmp_path / "faiss", "docs", "m", DIM, faiss_options())
    qdrant_index = await QdrantIndex.create(
        qdrant_options(qdrant_path=tmp_path / "q", qdrant_exact=True), "docs", "m", DIM
    )
    for index in (faiss_index, qdrant_index):
        await index.upsert(docs, vectors)
        await index.publish()
    queries = corpus(20, seed=4)[1]
    for filter in (None, {"lang": "fr"}, {"tags": ["t1", "t4"], "public": False}):
        a = (await faiss_index.search(queries, 10, filter)).hits
        b = (await qdrant_index.search(queries, 10, filter)).hits
        for left, right in zip(a, b, strict=True):
            assert [h.id for h in left] == [h.id for h in right]
            np.testing.assert_allclose([h.score for h in left], [h.score for h in right], atol=1e-5)
    await faiss_index.close()
    await qdrant_index.close()


async def test_writes_are_invisible_until_publish_and_survive_a_crashed_run(
    make_index: Factory,
) -> None:
    index, _docs, vectors = await filled(make_index, n=20)
    reader = index  # even the writer's own searches see only the published generation
    changed = Document("d3", "changed", "t", {"lang": "xx"})
    await index.upsert([changed], vectors[3:4])
    await index.upsert([Document("new", "new", "t", {})], vectors[7:8] * -1)
    assert await index.delete(["d9"]) == 1
    hits = (await reader.search(vectors[3:4], 1)).hits[0]
    assert (hits[0].id, hits[0].text) == ("d3", "text 3")
    assert (await reader.search(vectors[9:10], 1)).hits[0][0].id == "d9"
    assert (await reader.search(vectors[7:8] * -1, 1)).hits[0][0].id != "new"
    assert await reader.count() == 20 and reader.generation == 1
    assert (await reader.search(vectors[3:4], 5, {"lang": "xx"})).hits[0] == []

    # The run dies here, before publishing; a new run finds its staged writes.
    await index.close()
    rerun = await make_index("docs")
    assert rerun.generation == 1
    assert await rerun.children(["d3", "d9", "new"]) == {
        "d3": {"d3": content_hash(changed)},
        "new": {"new": content_hash(Document("new", "new", "t", {}))},
    }
    assert await rerun.publish() == 2
    assert await rerun.count() == 20  # one added, one deleted, one replaced in place
    hits = (await rerun.search(vectors[3:4], 1, {"lang": "xx"})).hits[0]
    assert (hits[0].id, hits[0].text) == ("d3", "changed")
    assert "d9" not in {h.id for h in (await rerun.search(vectors, 20)).hits[9]}
    assert (await rerun.search(vectors[7:8] * -1, 1)).hits[0][0].id == "new"


async def test_a_record_written_twice_in_one_run_is_indexed_once(make_index: Factory) -> None:
    index, _docs, vectors = await filled(make_index, n=10)
    for text in ("first", "second"):
        await index.upsert([Document("d1", text, "", {})], vectors[1:2])
    await index.upsert([Document("fresh", "x", "", {})], vectors[2:3])
    assert await index.delete(["fresh"]) == 1  # staged, never published: gone
    assert await index.publish() == 2
    assert await index.count() == 10
    hits = (await index.search(vectors[1:2], 10)).hits[0]
    assert [h.text for h in hits if h.id == "d1"] == ["second"]
    assert "fresh" not in {h.id for h in hits}
    await index.upsert([Document("d1", "third", "", {})], vectors[1:2])  # the next run
    assert await index.publish() == 3 and await index.count() == 10


async def test_qdrant_deletes_versions_no_servable_generation_sees(tmp_path: Path) -> None:
    index = await QdrantIndex.create(qdrant_options(qdrant_path=tmp_path / "q"), "docs", "m", DIM)
    docs, vectors = corpus(10)
    await index.upsert(docs, vectors)
    assert await index.publish() == 1
    for generation, text in ((2, "second"), (3, "third")):
        await index.upsert([Document("d1", text, "", {})], vectors[1:2])
        assert await index.publish() == generation
    points = (await index._client.count("docs", exact=True)).count
    # the live 10, plus the version generation 2 still sees (a gateway may be serving it
    # until its next reload); the one retired by generation 2 is gone
    assert points == 11
    await index.close()


async def test_a_qdrant_folder_in_use_by_another_process_is_a_clear_error(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient

    holder = QdrantClient(path=str(tmp_path / "q"))  # holds the folder's lock, as a process would
    options = qdrant_options(qdrant_path=tmp_path / "q")
    with pytest.raises(IndexUnavailable, match="is in use by another process"):
        await QdrantIndex.create(options, "docs", "m", DIM)
    holder.close()
    index = await QdrantIndex.create(options, "docs", "m", DIM)  # free again: it opens
    assert index.generation == 0
    await index.close()


# -- the lexical side: the same analyzer and BM25 on every backend ------------------------------

WORDS = (
    *("protein", "cell", "tumour", "growth", "signal", "receptor", "membrane", "enzyme"),
    *("gene", "therapy", "vaccine", "virus", "immune", "response", "brain", "neuron"),
    *("memory", "sleep", "heart", "blood", "pressure", "liver", "kidney", "bone", "muscle"),
    *("diet", "obesity", "insulin", "glucose", "fat", "exercise", "infection", "bacteria"),
)


def worded(n: int = 120, seed: int = 5) -> tuple[list[Document], np.ndarray]:
    """Documents of a dozen words from a small vocabulary (and the metadata of `corpus`)."""
    docs, vectors = corpus(n, seed)
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=12)) for _ in range(n)]
    return [
        Document(d.id, text, f"title {i}", d.metadata)
        for i, (d, text) in enumerate(zip(docs, texts, strict=True))
    ], vectors


async def test_lexical_search_goes_through_the_analyzer(make_index: Factory) -> None:
    docs, vectors = corpus(20)
    docs[3] = Document("d3", "The cats were running quickly", "", docs[3].metadata)
    docs[4] = Document("d4", "A dog sleeps", "Naïve résumé", docs[4].metadata)
    index = await make_index("docs")
    assert index.publishes_lexical
    await index.upsert(docs, vectors)
    await index.publish()
    assert index.has_lexical
    (hits,) = (await index.lexical_search(["cat runs"], 5)).hits  # stemmed, case folded
    assert [h.id for h in hits] == ["d3"] and hits[0].score > 0 and hits[0].text == docs[3].text
    (title,) = (await index.lexical_search(["RÉSUMÉ"], 5)).hits  # the title is indexed too
    assert [h.id for h in title] == ["d4"]
    empty = (await index.lexical_search(["the and of", "", "zzzz"], 5)).hits
    assert empty == [[], [], []]  # stop words only, nothing, or no such word


@pytest.mark.parametrize(
    "filter",
    [{"lang": "de"}, {"public": True}, {"tags": ["t1", "t4"]}, {"half": 1}, {"lang": "xx"}],
)
async def test_lexical_filters_mean_what_vector_filters_mean(
    make_index: Factory, filter: Filter
) -> None:
    docs, vectors = worded()
    docs = [Document(d.id, d.text + " common", d.title, d.metadata) for d in docs]
    index = await make_index("docs")
    await index.upsert(docs, vectors)
    await index.publish()
    # every document holds "common": the filter alone decides which are found
    words = {h.id for h in (await index.lexical_search(["common"], 200, filter)).hits[0]}
    vectors_found = {h.id for h in (await index.search(vectors[:1], 200, filter)).hits[0]}
    assert words == vectors_found


async def test_lexical_writes_are_published_with_the_vectors(make_index: Factory) -> None:
    index, _docs, vectors = await filled(make_index, n=10)
    await index.upsert([Document("new", "glacier moraine", "", {})], vectors[:1])
    await index.upsert([Document("d2", "glacier", "", {})], vectors[2:3])
    assert await index.delete(["d5"]) == 1
    assert (await index.lexical_search(["glacier"], 5)).hits == [[]]  # staged, not published
    assert [h.id for h in (await index.lexical_search(["text 5"], 20)).hits[0]].count("d5") == 1
    assert await index.publish() == 2
    found = (await index.lexical_search(["glacier moraine"], 5)).hits[0]
    assert [h.id for h in found] == ["new", "d2"] and found[1].text == "glacier"
    assert "d5" not in {h.id for h in (await index.lexical_search(["text 5"], 20)).hits[0]}


async def test_faiss_and_qdrant_rank_words_alike(tmp_path: Path) -> None:
    """tantivy's BM25 and Qdrant's (our term weights, its IDF) over the same analyzer: the same
    scores, so the same ranking up to the order of equal scores."""
    docs, vectors = worded(300, seed=6)
    faiss_index = await FaissIndex.create(tmp_path / "faiss", "docs", "m", DIM, faiss_options())
    qdrant_index = await QdrantIndex.create(
        qdrant_options(qdrant_path=tmp_path / "q", qdrant_exact=True), "docs", "m", DIM
    )
    for index in (faiss_index, qdrant_index):
        await index.upsert(docs, vectors)
        await index.publish()
    rng = np.random.default_rng(7)
    queries = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 4)))) for _ in range(40)]
    for filter in (None, {"lang": "fr"}):
        a = (await faiss_index.lexical_search(queries, 10, filter)).hits
        b = (await qdrant_index.lexical_search(queries, 10, filter)).hits
        for left, right in zip(a, b, strict=True):
            np.testing.assert_allclose([h.score for h in left], [h.score for h in right], rtol=1e-4)
            if left:  # the same documents above the last score; equal scores in any order
                last = left[-1].score
                above = {h.id for h in left if h.score > last + 1e-4}
                assert above == {h.id for h in right if h.score > last + 1e-4}
    await faiss_index.close()
    await qdrant_index.close()


async def test_an_old_collection_gets_its_lexical_index_without_re_embedding(
    make_index: Factory, tmp_path: Path
) -> None:
    index = await make_index("docs")
    docs, vectors = worded(40)
    await index.upsert(docs, vectors)
    await index.publish()
    await index.close()
    index = await _as_before_lexical_search(index, tmp_path, make_index)
    assert not index.has_lexical
    with pytest.raises(IndexUnavailable):
        await index.lexical_search(["protein"], 5)
    generation = index.generation
    assert await index.publish() is None  # nothing staged
    assert await index.publish(rebuild=True) == generation + 1  # no vectors asked for
    assert index.has_lexical and await index.count() == 40
    (hits,) = (await index.lexical_search([docs[7].text], 1)).hits
    assert hits[0].id == "d7"
    (near,) = (await index.search(vectors[7:8], 1)).hits
    assert near[0].id == "d7"  # the vectors are the ones written before


async def _as_before_lexical_search(index: VectorIndex, root: Path, make: Factory) -> Collection:
    """The same collection as an older semsearch wrote it: no lexical index (FAISS: its
    generations without one; Qdrant: no sparse vectors, no lexical flag)."""
    parts = [index.primary, index.fallback] if isinstance(index, FallbackIndex) else [index]
    for part in parts:
        if isinstance(part, FaissIndex):
            for folder in (root / "faiss" / "docs" / "generations").glob("gen-*/lexical"):
                shutil.rmtree(folder)
        else:
            assert isinstance(part, QdrantIndex)
            await _rewrite_without_sparse(part._options, part.collection)
    return await make("docs")


async def _rewrite_without_sparse(options: QdrantOptions, name: str) -> None:
    client = clients.acquire(options)
    try:
        meta = await read_meta(client, name)
        assert meta is not None
        points, offset = [], None
        while True:
            page, offset = await client.scroll(
                name, limit=256, offset=offset, with_payload=True, with_vectors=True
            )
            points += page
            if offset is None:
                break
        await client.delete_collection(name)
        await client.create_collection(
            name,
            vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT),
            metadata={
                META_KEY: {k: v for k, v in meta.items() if k not in ("lexical", "avg_terms")}
            },
        )
        await client.upsert(
            name,
            points=[
                models.PointStruct(id=p.id, vector=p.vector[""], payload=p.payload) for p in points
            ],
            wait=True,
        )
    finally:
        await clients.release(options)
