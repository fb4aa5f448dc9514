"""Build data/ (the demo and test corpus) from BEIR SciFact. Run once; the output is committed.

    python scripts/build_sample_data.py ../shared/datasets/scifact data/

Picks test queries that have exactly one judged-relevant abstract, and a corpus of ~300
abstracts: those positives, the abstracts all-MiniLM-L6-v2 finds closest to each query (hard
negatives, so the demo is not trivially easy), and a seeded random sample of the rest. It
keeps the queries whose judged abstract ranks first among the subset the way `semsearch index`
indexes it (chunked to the model window, a document scoring as its best chunk) and, when a
cross-encoder folder is given, also after reranking the dense top 30 chunks with the search
path's default blend of reranker and ANN scores.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from app.config import GatewaySettings
from app.ingest.chunking import Chunker
from app.models.paths import resolve_model_path
from app.models.tokens import TextTokenizer
from app.search.ranking import fuse
from app.types import Document

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CORPUS_SIZE = 300
HARD_NEGATIVES = 12
QUERIES_WANTED = 10


def main(source: Path, target: Path, reranker_dir: str | None) -> None:
    rng = random.Random(7)
    corpus = {d["_id"]: d for d in map(json.loads, (source / "corpus.jsonl").open())}
    queries = {q["_id"]: q["text"] for q in map(json.loads, (source / "queries.jsonl").open())}
    qrels: dict[str, list[str]] = {}
    with (source / "qrels" / "test.tsv").open() as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            qrels.setdefault(row["query-id"], []).append(row["corpus-id"])
    single = sorted((q for q, docs in qrels.items() if len(docs) == 1), key=int)
    picked = rng.sample(single, 40)

    model = SentenceTransformer(resolve_model_path(MODEL))
    ids = list(corpus)
    passages = [f"{corpus[i]['title']} {corpus[i]['text']}" for i in ids]
    doc_vecs = model.encode(
        passages, batch_size=64, normalize_embeddings=True, show_progress_bar=True
    )
    q_vecs = model.encode([queries[q] for q in picked], normalize_embeddings=True)

    chosen: set[str] = set()
    for q, vec in zip(picked, q_vecs, strict=True):
        chosen.add(qrels[q][0])
        nearest = np.argsort(-(doc_vecs @ vec))[:HARD_NEGATIVES]
        chosen.update(ids[i] for i in nearest)
        if len(chosen) >= CORPUS_SIZE * 2 // 3:
            break
    rest = [i for i in ids if i not in chosen]
    chosen.update(rng.sample(rest, CORPUS_SIZE - len(chosen)))
    subset = sorted(chosen, key=int)

    # the demo's index: chunks of the subset, as `semsearch index` makes them
    tokenizer = TextTokenizer.from_folder(resolve_model_path(MODEL), int(model.max_seq_length))
    chunker = Chunker(tokenizer)
    chunks = [
        c
        for doc_id in subset
        for c in chunker.split(Document(doc_id, corpus[doc_id]["text"], corpus[doc_id]["title"]))
    ]
    chunk_vecs = model.encode([c.passage for c in chunks], batch_size=64, normalize_embeddings=True)
    reranker = CrossEncoder(reranker_dir, max_length=256) if reranker_dir else None
    kept = []
    for q, vec in zip(picked, q_vecs, strict=True):
        expected = qrels[q][0]
        if expected not in chosen:
            continue
        order = np.argsort(-(chunk_vecs @ vec))
        if chunks[order[0]].parent_id != expected:
            continue
        if reranker is not None:  # the search path's default: reranker and ANN blended
            top = [chunks[i] for i in order[:30]]
            logits = reranker.predict(
                [(queries[q], c.passage) for c in top], activation_fn=torch.nn.Identity()
            )
            fused = fuse(
                [float(chunk_vecs[i] @ vec) for i in order[:30]],
                [float(x) for x in logits],
                GatewaySettings().rerank_weight,
            )
            if top[int(np.argmax(fused))].parent_id != expected:
                continue
        kept.append({"id": q, "text": queries[q], "expected_id": expected})
        if len(kept) == QUERIES_WANTED:
            break

    target.mkdir(parents=True, exist_ok=True)
    with (target / "corpus.jsonl").open("w") as out:
        for doc_id in subset:
            doc = corpus[doc_id]
            record = {
                "id": doc_id,
                "title": doc["title"],
                "text": doc["text"],
                "metadata": {"source": "scifact"},
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    with (target / "queries.jsonl").open("w") as out:
        for query in kept:
            out.write(json.dumps(query, ensure_ascii=False) + "\n")
    print(f"{len(subset)} documents, {len(kept)} queries")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
