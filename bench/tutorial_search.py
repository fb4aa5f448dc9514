"""The two-stage search service a user would write from the tutorials: the search baseline.

The strongest simple version, not a handicapped one: an `async def` endpoint (no thread
hand-off) that calls `SentenceTransformer.encode` on the query, searches a FAISS flat inner
product index in memory, and scores the top `rerank_depth` with `CrossEncoder.predict` (the
model's own batch call). Documents and vectors come from a semsearch collection's store, so
both services search the same vectors.

    BENCH_STORE=<index_dir>/<collection>/store.sqlite BENCH_EMBEDDER=<folder> \
        BENCH_RERANKER=<folder> uvicorn bench.tutorial_search:app --port 9000
"""

from __future__ import annotations

import os
from typing import Any

import faiss
from fastapi import FastAPI
from sentence_transformers import CrossEncoder, SentenceTransformer

from bench.common import load_store

app = FastAPI()
docs, vectors = load_store(os.environ["BENCH_STORE"])
index = faiss.IndexFlatIP(vectors.shape[1])
index.add(vectors)
embedder = SentenceTransformer(os.environ["BENCH_EMBEDDER"], device="cpu")
reranker = CrossEncoder(
    os.environ["BENCH_RERANKER"],
    device="cpu",
    max_length=int(os.environ.get("BENCH_RERANKER_MAX_LENGTH", "256")),
)


@app.post("/v1/search")
async def search(body: dict[str, Any]) -> dict[str, Any]:
    top_k = int(body.get("top_k", 10))
    depth = int(body.get("rerank_depth", 20)) if body.get("rerank", True) else top_k
    vector = embedder.encode([body["query"]], normalize_embeddings=True)
    scores, ids = index.search(vector, depth)
    hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
    if body.get("rerank", True):
        pairs = [(body["query"], f"{docs[i][1]} {docs[i][2]}".strip()) for i, _ in hits]
        logits = reranker.predict(pairs)
        hits = sorted(
            ((i, float(s)) for (i, _), s in zip(hits, logits, strict=True)), key=lambda h: -h[1]
        )
    return {
        "results": [
            {"id": docs[i][0], "title": docs[i][1], "text": docs[i][2], "score": s}
            for i, s in hits[:top_k]
        ]
    }
