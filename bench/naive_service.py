"""The reference every model server is measured against: the FastAPI service tutorials show.

One `model.encode(...)` / `CrossEncoder.predict(...)` per request in an `async def` endpoint,
no batching across requests, no limits. Same wire shapes as ours so the load generator sends
identical requests.

`async def`, not `def`: the strongest simple version. A `def` endpoint runs on FastAPI's
thread pool, where at 15 clients the threads fight torch's over two cores and throughput falls
(65 to 48 req/s here); an async endpoint blocks its event loop while the model runs, so
requests take turns and nothing competes. Against the threaded one our ratio looked 4.2x.

    BENCH_EMBEDDER=<folder> BENCH_RERANKER=<folder> BENCH_RERANKER_MAX_LENGTH=512 \
        uvicorn bench.naive_service:app --port 9000
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from sentence_transformers import CrossEncoder, SentenceTransformer

app = FastAPI()
embedder = SentenceTransformer(os.environ["BENCH_EMBEDDER"], device="cpu")
reranker = CrossEncoder(
    os.environ["BENCH_RERANKER"],
    device="cpu",
    max_length=int(os.environ.get("BENCH_RERANKER_MAX_LENGTH", "512")),
)


@app.post("/v1/embeddings")
async def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    vectors = embedder.encode(texts, normalize_embeddings=True)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": v.tolist()}
            for i, v in enumerate(vectors)
        ],
        "model": "naive",
    }


@app.post("/v1/ranking")
async def ranking(body: dict[str, Any]) -> dict[str, Any]:
    query = body["query"]["text"]
    scores = reranker.predict([(query, p["text"]) for p in body["passages"]])
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    return {"rankings": [{"index": i, "logit": float(scores[i])} for i in order]}
