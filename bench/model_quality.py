"""Quality and speed of the embedder's backends on a BEIR dataset (dense retrieval only).

    python -m bench.model_quality ../shared/datasets/scifact [--variants torch-float32,...]

Each variant embeds the corpus (title + text, cut at the model window) and the queries through
the real in-process path (tokenizer, BatchQueue, engine), ranks exactly by cosine, and is
scored with nDCG@10 / R@10 / R@100 / RR@10. The float32 torch row is the reference; the
published all-MiniLM-L6-v2 SciFact nDCG@10 is 0.6451.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.config import EmbedderSettings
from app.evaluation.beir import evaluate, load_beir
from app.models import build_embedder
from app.types import InputType, Truncate
from bench.common import machine, table, write_json

VARIANTS: dict[str, dict[str, Any]] = {
    "torch-float32": {"backend": "sentence-transformers", "dtype": "float32"},
    "torch-bfloat16": {"backend": "sentence-transformers", "dtype": "bfloat16"},
    "onnx-float32": {"backend": "onnx"},
    "onnx-int8": {"backend": "onnx-int8"},
}


async def run_variant(name: str, dataset_dir: Path, model: str) -> dict[str, Any]:
    dataset = load_beir(dataset_dir)
    embedder = build_embedder(EmbedderSettings(model=model, **VARIANTS[name]))
    await embedder.start()
    if not embedder.ready:
        raise SystemExit(f"{name}: {embedder.status}")
    passages = [d.passage for d in dataset.corpus]
    started = time.perf_counter()
    chunks = [passages[i : i + 256] for i in range(0, len(passages), 256)]
    doc_vectors = np.concatenate(
        [(await embedder.embed(c, InputType.PASSAGE, Truncate.END)).vectors for c in chunks]
    )
    seconds = time.perf_counter() - started
    query_ids = list(dataset.queries)
    query_vectors = (
        await embedder.embed([dataset.queries[q] for q in query_ids], InputType.QUERY, Truncate.END)
    ).vectors
    await embedder.stop()
    scores = query_vectors @ doc_vectors.T
    top = np.argsort(-scores, axis=1)[:, :100]
    run = {
        q: {dataset.corpus[j].id: float(scores[i, j]) for j in top[i]}
        for i, q in enumerate(query_ids)
    }
    return {
        "variant": name,
        **evaluate(run, dataset.qrels),
        "passages_per_s": len(passages) / seconds,
        "backend": embedder.info.backend,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    rows = []
    for name in args.variants.split(","):
        row = asyncio.run(run_variant(name, args.dataset, args.model))
        rows.append(row)
        print(
            f"{name}: nDCG@10 {row['nDCG@10']:.4f}, {row['passages_per_s']:.1f} passages/s",
            flush=True,
        )
    reference = rows[0]["nDCG@10"]
    for row in rows:
        row["delta_nDCG@10"] = row["nDCG@10"] - reference
        row["speedup"] = row["passages_per_s"] / rows[0]["passages_per_s"]
    print(
        table(
            rows,
            [
                "variant",
                "nDCG@10",
                "delta_nDCG@10",
                "R@10",
                "R@100",
                "RR@10",
                "passages_per_s",
                "speedup",
            ],
        )
    )
    path = write_json(
        "model_quality",
        {"dataset": str(args.dataset), "model": args.model, "machine": machine(), "rows": rows},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
