"""Indexing throughput and memory.

    python -m bench.indexing throughput ../shared/datasets/scifact/corpus.jsonl
    python -m bench.indexing memory --sizes 10000,100000

throughput: the real `semsearch index` path (reading, chunking, the in-process embedder with
its batching, SQLite staging, FAISS publish) against the raw batched encode of the same
passages by sentence-transformers at the same precision, measured in the same run.

memory: peak RSS of an indexing run in a fresh process for generated corpora of different
sizes, with a deterministic embedder so only the pipeline's own memory is measured; reports
the embed phase and the publish phase (which holds the index itself) separately.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import machine, table, write_json


async def _index_run(path: Path, index_dir: Path, fake_dim: int | None) -> dict[str, Any]:
    from app.config import EmbedderSettings, GatewaySettings
    from app.index.faiss.build import FaissOptions
    from app.index.faiss.index import FaissIndex
    from app.ingest.chunking import Chunker
    from app.ingest.indexer import index_documents
    from app.ingest.readers import read_documents
    from app.models import build_embedder
    from app.models.fake import FakeEmbedder

    embedder: Any = (
        FakeEmbedder(dimension=fake_dim) if fake_dim else build_embedder(EmbedderSettings())
    )
    await embedder.start()
    info = embedder.info
    chunker = None
    if not fake_dim:
        chunker = Chunker.for_model(info)
    index = await FaissIndex.create(
        index_dir,
        "bench",
        info.model_id,
        info.dimension or 0,
        FaissOptions.from_settings(GatewaySettings()),
    )
    # throughput keeps the passages (the raw baseline encodes the same ones); the memory run
    # only counts them, or the bench's own lists would be the memory growth it measures
    embedded: list[str] = []
    passages = 0
    original = embedder.embed

    async def recording(texts: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal passages
        passages += len(texts)
        if not fake_dim:
            embedded.extend(texts)
        result = await original(texts, *args, **kwargs)
        if fake_dim:
            embedder.calls.clear()  # the fake logs every call for tests; not a pipeline cost
        return result

    embedder.embed = recording
    started = time.perf_counter()
    peak_before_publish = 0

    def note(_: int) -> None:
        nonlocal peak_before_publish
        peak_before_publish = max(peak_before_publish, _peak_rss_mb())

    report = await index_documents(
        read_documents(path),
        index,
        embedder,
        chunker=chunker,
        batch_size=GatewaySettings().index_batch_size,
        on_batch=note,
    )
    seconds = time.perf_counter() - started
    await index.close()
    await embedder.stop()
    return {
        "documents": report.read,
        "passages": passages,
        "seconds": seconds,
        "passages_per_s": passages / seconds,
        "embedded": embedded,
        "peak_rss_embed_mb": peak_before_publish,
        "peak_rss_total_mb": _peak_rss_mb(),
    }


def _peak_rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _raw_encode_rate(passages: list[str]) -> float:
    """sentence-transformers' own batched encode, at the precision our default picks."""
    import torch
    from sentence_transformers import SentenceTransformer

    from app.models.engines import resolve_dtype
    from app.models.paths import resolve_model_path

    model = SentenceTransformer(
        resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"), device="cpu"
    )
    dtype = resolve_dtype("auto", "cpu")
    context: Any = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if dtype == "bfloat16"
        else torch.inference_mode()
    )
    with torch.inference_mode(), context:
        model.encode(passages[:64], batch_size=64)
        started = time.perf_counter()
        model.encode(passages, batch_size=64)
        seconds = time.perf_counter() - started
    return len(passages) / seconds


def throughput(corpus: Path) -> None:
    with tempfile.TemporaryDirectory() as work:
        ours = asyncio.run(_index_run(corpus, Path(work), None))
    passages = ours.pop("embedded")
    raw = _raw_encode_rate(passages)
    rows = [
        {
            "run": "semsearch index (end to end)",
            "passages": ours["passages"],
            "seconds": ours["seconds"],
            "passages_per_s": ours["passages_per_s"],
        },
        {
            "run": "raw SentenceTransformer.encode",
            "passages": len(passages),
            "seconds": len(passages) / raw,
            "passages_per_s": raw,
        },
    ]
    ratio = ours["passages_per_s"] / raw
    print(table(rows, ["run", "passages", "seconds", "passages_per_s"]))
    print(f"ratio: {ratio:.3f} (target >= 0.9)")
    path = write_json(
        "indexing-throughput",
        {
            "corpus": str(corpus),
            "documents": ours["documents"],
            "rows": rows,
            "ratio": ratio,
            "machine": machine(),
        },
    )
    print(f"wrote {path}")


def _generate(path: Path, count: int) -> None:
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    with path.open("w") as out:
        for i in range(count):
            text = " ".join(rng.choices(words, k=200))
            out.write(
                json.dumps(
                    {
                        "id": f"doc{i}",
                        "title": f"Document {i}",
                        "text": text,
                        "metadata": {"bucket": i % 10},
                    }
                )
                + "\n"
            )


def memory(sizes: list[int], dim: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for size in sizes:
            corpus = Path(work) / f"corpus-{size}.jsonl"
            _generate(corpus, size)
            child = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.indexing",
                    "_child",
                    str(corpus),
                    str(Path(work) / f"index-{size}"),
                    str(dim),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(child.stdout.strip().splitlines()[-1])
            result.pop("embedded", None)
            rows.append({"documents": size, **result, "index_mb": size * dim * 4 / 2**20})
            print(
                f"{size}: peak RSS {result['peak_rss_embed_mb']} MB while embedding, "
                f"{result['peak_rss_total_mb']} MB with the published index",
                flush=True,
            )
    print(
        table(rows, ["documents", "seconds", "peak_rss_embed_mb", "peak_rss_total_mb", "index_mb"])
    )
    path = write_json("indexing-memory", {"dim": dim, "rows": rows, "machine": machine()})
    print(f"wrote {path}")


def main() -> None:
    if sys.argv[1:2] == ["_child"]:
        _, _, corpus, index_dir, dim = sys.argv
        result = asyncio.run(_index_run(Path(corpus), Path(index_dir), int(dim)))
        result.pop("embedded")
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("corpus", type=Path)
    m = sub.add_parser("memory")
    m.add_argument("--sizes", default="10000,100000")
    m.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    if args.what == "throughput":
        throughput(args.corpus)
    else:
        memory([int(s) for s in args.sizes.split(",")], args.dim)


if __name__ == "__main__":
    main()
