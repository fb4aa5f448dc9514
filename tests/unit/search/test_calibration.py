"""Calibrating a collection's fusion weight with lead-sentence pseudo-queries: it follows the list
that finds the rest of a document from its first sentence, and is measured again only when the
collection has doubled or halved."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from app.index.faiss.index import FaissIndex
from app.ingest.indexer import index_documents
from app.models import Embeddings
from app.models.fake import FakeEmbedder
from app.search.calibration import QUERIES, best_weight, calibrate, split_lead
from app.search.fusion import UNCALIBRATED_WEIGHT
from app.types import Calibration, Document, InputType, Truncate
from tests.conftest import faiss_options

N = 120


class TopicEmbedder(FakeEmbedder):
    """Knows which document each word belongs to: a text's vector points at its document, so
    a lead sentence lands on the rest of its own document (the dense list is right)."""

    def __init__(self) -> None:
        super().__init__(model_id="topics", dimension=N)

    async def embed(
        self,
        texts: Sequence[str],
        input_type: InputType,
        truncate: Truncate = Truncate.NONE,
        normalize: bool = True,
    ) -> Embeddings:
        out = np.zeros((len(texts), N), np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace(".", " ").split():
                digits = "".join(c for c in word if c.isdigit())
                if digits and word.startswith(("lead", "rest")):
                    out[row, int(digits) % N] += 1
            out[row] /= max(float(np.linalg.norm(out[row])), 1e-9)
        return Embeddings(out, 0)


class NoiseEmbedder(FakeEmbedder):
    """A vector that says nothing about the text (the dense list is useless)."""

    def __init__(self) -> None:
        super().__init__(model_id="noise", dimension=32)

    async def embed(
        self,
        texts: Sequence[str],
        input_type: InputType,
        truncate: Truncate = Truncate.NONE,
        normalize: bool = True,
    ) -> Embeddings:
        seeds = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) for t in texts]
        rows = [np.random.default_rng(s).standard_normal(32) for s in seeds]
        vectors = np.asarray(rows, dtype=np.float32)
        return Embeddings(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), 0)


def documents(lead_words_in_rest_of: int) -> list[Document]:
    """Three sentences each. Lead sentence i holds the words lead{i}x; its rest holds rest{i}x
    and the lead words of document `(i + lead_words_in_rest_of) % N`: with 0 a document's own
    rest shares its lead's words (BM25 finds it), with 1 its neighbour's does (BM25 misleads)."""
    docs = []
    for i in range(N):
        j = (i + lead_words_in_rest_of) % N
        lead = f"Lead{i}a lead{i}b lead{i}c lead{i}d."
        rest = (
            f"Rest{i}a rest{i}b rest{i}c rest{i}d rest{i}e rest{i}f lead{j}a lead{j}b. "
            f"Rest{i}g rest{i}h rest{i}i rest{i}j rest{i}k rest{i}l rest{i}m rest{i}n rest{i}o "
            f"rest{i}p rest{i}q rest{i}r lead{j}c."
        )
        docs.append(Document(f"d{i}", f"{lead} {rest}", f"Document {i}"))
    return docs


async def staged(tmp_path: Path, docs: list[Document], embedder: FakeEmbedder) -> FaissIndex:
    index = await FaissIndex.create(
        tmp_path, "c", embedder.info.model_id, embedder.info.dimension or 0, faiss_options()
    )
    vectors = (await embedder.embed([d.passage for d in docs], InputType.PASSAGE)).vectors
    await index.upsert(docs, vectors)
    return index


async def test_words_that_mislead_get_no_weight(tmp_path: Path) -> None:
    embedder = TopicEmbedder()
    index = await staged(tmp_path, documents(lead_words_in_rest_of=1), embedder)
    calibration = await calibrate(index, embedder)
    assert calibration is not None
    assert calibration.weight == 0.0 and calibration.queries == N and calibration.documents == N
    assert calibration.scores["0.0"] == 1.0 and calibration.scores["1.0"] <= 0.5


async def test_words_that_find_get_the_weight(tmp_path: Path) -> None:
    embedder = NoiseEmbedder()
    index = await staged(tmp_path, documents(lead_words_in_rest_of=0), embedder)
    calibration = await calibrate(index, embedder)
    assert calibration is not None and calibration.weight >= 0.8
    assert calibration.scores["1.0"] == 1.0 and calibration.scores["0.0"] < 0.2


async def test_too_few_documents_of_several_sentences_leave_it_uncalibrated(
    tmp_path: Path,
) -> None:
    embedder = TopicEmbedder()
    short = [Document(f"s{i}", f"Lead{i}a only one sentence here.", "") for i in range(N)]
    calibration = await calibrate(await staged(tmp_path, short, embedder), embedder)
    assert calibration == Calibration(UNCALIBRATED_WEIGHT, N, 0, {})


async def test_measured_again_only_when_the_collection_doubled_or_halved(tmp_path: Path) -> None:
    embedder = TopicEmbedder()
    index = await staged(tmp_path, documents(1)[:50], embedder)
    await index.publish(calibration=await calibrate(index, embedder))
    assert index.calibration is not None and index.calibration.documents == 50
    await index.upsert(documents(1)[50:100], np.eye(N, dtype=np.float32)[50:100])
    assert await calibrate(index, embedder) is None  # 100 records: not more than twice 50
    await index.upsert(documents(1)[100:], np.eye(N, dtype=np.float32)[100:])
    assert await calibrate(index, embedder) is not None  # 120: more than doubled
    assert await calibrate(index, embedder, force=True) is not None


async def test_indexing_calibrates_only_a_collection_with_a_lexical_index(tmp_path: Path) -> None:
    # a dense-only collection fuses nothing: its hundreds of pseudo-queries would be wasted
    embedder = TopicEmbedder()
    for lexical in (False, True):
        index = await FaissIndex.create(
            tmp_path / str(lexical), "c", "topics", N, faiss_options(lexical_index=lexical)
        )
        assert index.publishes_lexical is lexical
        report = await index_documents(documents(0), index, embedder)
        assert report.calibrated is lexical
        assert (index.calibration is not None) is lexical
        await index.close()


def test_lead_sentences_and_the_peak_of_the_curve() -> None:
    assert split_lead("Too short. Two sentences.") is None
    lead, rest = split_lead("Aspirin thins the blood. " + "It does. " * 10) or ("", "")
    assert lead == "Aspirin thins the blood." and rest.startswith("It does.")
    assert best_weight([0.5, 0.4, 0.3, 0.2, 0.1, 0, 0, 0, 0, 0, 0]) == 0.0
    # one noisy spike does not beat a broad peak
    assert best_weight([0.0, 0.1, 0.2, 0.6, 0.6, 0.6, 0.2, 0.9, 0.1, 0.0, 0.0]) == 0.4
    assert QUERIES >= 100


@pytest.mark.parametrize("text", ["", "One. Two. Three.", "no sentence ends here at all"])
def test_no_pseudo_query_from_too_little_text(text: str) -> None:
    assert split_lead(text) is None
