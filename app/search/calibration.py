"""Choosing a collection's fusion weight when it is published, with no judgments from the user.

Which share the lexical list should get depends on the collection: on SciFact (biomedical
claims) BM25 beats the small dense model and a 0.4-0.5 blend adds ten points of nDCG@10; on
DBpedia entities BM25 is far behind and any lexical share loses. So the weight is measured on
the collection itself, with pseudo-queries made by neither retriever (an inverse cloze task):

- a query is a record's lead sentence, which says what the record is about, as a user's query
  says what they want;
- its one relevant record is that record *without* the sentence, so neither side can match
  the query's own text: BM25 must find it through the words the rest shares with the lead,
  the dense model through what it means. Leaving the sentence in would hand BM25 an exact
  match and calibrate towards words; any query written from one side's view (its top terms,
  its nearest neighbours) would favour that side.

Each candidate weight fuses the two lists over a pool of the collection's records (at random,
the targets among them, each with the sentence removed) and scores MRR@10; the peak of the
curve (smoothed over neighbouring weights: a few hundred queries leave noise of about 0.01)
is the weight, the smaller one on a tie. Measured with the default model: SciFact 0.4-0.6 over
three samples (its test split scores 0.727-0.732 at those), DBpedia 0 in all three (the dense
order). Random sentences instead of lead ones chose 0-0.3 on DBpedia: a lead sentence is what
makes the queries look like queries.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.index.base import Collection
from app.index.faiss.lexical import LexicalReader, write_lexical
from app.logs import get_logger
from app.models import Embedder
from app.search.fusion import UNCALIBRATED_WEIGHT, fuse
from app.types import (
    Calibration,
    Document,
    FloatArray,
    Fusion,
    FusionMethod,
    Hit,
    InputType,
    Truncate,
)

log = get_logger(__name__)

WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
POOL = 10_000  # records the pseudo-queries are searched among
QUERIES = 400
MIN_QUERIES = 50  # fewer usable records: not calibrated (UNCALIBRATED_WEIGHT)
CANDIDATES = 100
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")


def split_lead(text: str) -> tuple[str, str] | None:
    """(lead sentence, the rest) of a record worth a pseudo-query: the lead of three words or
    more, the rest of two sentences and twenty words or more."""
    sentences = _SENTENCE_END.split(text.strip())
    if len(sentences) < 3:
        return None
    lead, rest = sentences[0], " ".join(sentences[1:])
    if len(lead.split()) < 3 or len(rest.split()) < 20:
        return None
    return lead, rest


async def calibrate(
    collection: Collection, embedder: Embedder, force: bool = False, seed: int = 0
) -> Calibration | None:
    """The fusion weight for `collection` as staged now (see the module's docstring); None
    when the one it has still holds: it was made on a collection between half and twice this
    size (counted up to POOL records). `force`: measure again anyway."""
    pool = await collection.sample(POOL, seed)
    previous = collection.calibration
    if (
        not force
        and previous is not None
        and previous.documents / 2 <= len(pool) <= 2 * previous.documents
    ):
        return None
    targets: list[tuple[int, str, Document]] = []
    for position, (doc, _) in enumerate(pool):
        if doc.metadata.get("chunk", 0) != 0:  # a later chunk starts mid-document
            continue
        split = split_lead(doc.text)
        if split is not None:
            lead, rest = split
            targets.append((position, lead, Document(doc.id, rest, doc.title)))
        if len(targets) == QUERIES:
            break
    if len(targets) < MIN_QUERIES:
        log.info("fusion_not_calibrated", records=len(pool), usable=len(targets))
        return Calibration(UNCALIBRATED_WEIGHT, len(pool), 0, {})
    docs = [doc for doc, _ in pool]
    vectors = np.stack([vector for _, vector in pool]).astype(np.float32)
    shortened_vectors = await _embed([t.passage for *_, t in targets], embedder, InputType.PASSAGE)
    for (position, _, shortened), vector in zip(targets, shortened_vectors, strict=True):
        docs[position], vectors[position] = shortened, vector
    queries = [lead for _, lead, _ in targets]
    query_vectors = await _embed(queries, embedder, InputType.QUERY)
    with tempfile.TemporaryDirectory(prefix="semsearch-calibration-") as folder:
        write_lexical(Path(folder), ((i, doc.passage) for i, doc in enumerate(docs)))
        reader = LexicalReader(Path(folder))
        lexical = [_lexical_hits(reader, query, docs) for query in queries]
    dense = [_dense_hits(vectors, query_vector, docs) for query_vector in query_vectors]
    scores = {}
    for weight in WEIGHTS:
        fusion = Fusion(FusionMethod.BLEND, weight)
        ranks = [
            _reciprocal_rank(fuse(d, w, fusion), target.id)
            for d, w, (_, _, target) in zip(dense, lexical, targets, strict=True)
        ]
        scores[f"{weight:.1f}"] = round(float(np.mean(ranks)), 4)
    weight = best_weight([scores[f"{w:.1f}"] for w in WEIGHTS])
    log.info("fusion_calibrated", weight=weight, queries=len(targets), records=len(pool))
    return Calibration(weight, len(pool), len(targets), scores)


def best_weight(curve: Sequence[float]) -> float:
    """The weight at the peak of `curve` (MRR by WEIGHTS) smoothed over its neighbours; the
    smaller weight on a tie."""
    smoothed = [float(np.mean(curve[max(0, i - 1) : i + 2])) for i in range(len(curve))]
    return WEIGHTS[int(np.argmax(smoothed))]  # argmax takes the first of equals


async def _embed(texts: list[str], embedder: Embedder, kind: InputType) -> FloatArray:
    parts = [
        (await embedder.embed(texts[i : i + 256], kind, Truncate.END)).vectors
        for i in range(0, len(texts), 256)
    ]
    return np.concatenate(parts).astype(np.float32)


def _dense_hits(vectors: FloatArray, query: FloatArray, docs: list[Document]) -> list[Hit]:
    scores = vectors @ query
    top = np.argsort(-scores, kind="stable")[:CANDIDATES]
    return [Hit(docs[i].id, float(scores[i]), "") for i in top]


def _lexical_hits(reader: LexicalReader, query: str, docs: list[Document]) -> list[Hit]:
    scores, rows = reader.search(query, CANDIDATES)
    return [Hit(docs[i].id, float(s), "") for s, i in zip(scores, rows, strict=True)]


def _reciprocal_rank(hits: list[Hit], target: str) -> float:
    for rank, hit in enumerate(hits[:10], start=1):
        if hit.id == target:
            return 1.0 / rank
    return 0.0
