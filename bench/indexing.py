"""Indexing throughput and memory.

    python -m bench.indexing throughput ../shared/datasets/scifact/corpus.jsonl
    python -m bench.indexing throughput CORPUS --no-raw   # lexical on vs off only
    python -m bench.indexing memory --sizes 10000,100000

throughput: the real `semsearch index` path (reading, chunking, the in-process embedder with
its batching, SQLite staging, FAISS publish) against the raw batched encode of the same
passages by sentence-transformers at the same precision, measured in the same run.

memory: peak RSS of an indexing run in a fresh process for generated corpora of different
sizes, with a deterministic embedder so only the pipeline's own memory is measured; reports
the embed phase and the publish phase (which holds the index itself) separately, with the
lexical index off and on.

throughput compares runs with the lexical index off and on (the calibration of the fusion
weight included) in the same process, one after the other.
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


async def _index_run(
    path: Path, index_dir: Path, fake_dim: int | None, lexical: bool = True
) -> dict[str, Any]:
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
        FaissOptions.from_settings(GatewaySettings(lexical_index=lexical)),
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
        "docs_per_s": report.read / seconds,
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


def throughput(corpus: Path, raw_encode: bool = True) -> None:
    """`semsearch index` with and without the lexical index, and the raw encode of the same
    passages, in one run. With the lexical index comes the fusion calibration too (its
    pseudo-queries are embedded): both are what indexing costs once hybrid search is on."""
    runs = {}
    for lexical in (False, True):
        with tempfile.TemporaryDirectory() as work:
            runs[lexical] = asyncio.run(_index_run(corpus, Path(work), None, lexical))
    passages = runs[False].pop("embedded")
    runs[True].pop("embedded")
    rows = [
        {
            "run": f"semsearch index, lexical index {'on' if lexical else 'off'}",
            "documents": run["documents"],
            "passages": run["passages"],
            "seconds": run["seconds"],
            "docs_per_s": run["docs_per_s"],
            "passages_per_s": run["passages_per_s"],
        }
        for lexical, run in runs.items()
    ]
    ratio = None
    if raw_encode:
        raw = _raw_encode_rate(passages)
        rows.append(
            {
                "run": "raw SentenceTransformer.encode",
                "passages": len(passages),
                "seconds": len(passages) / raw,
                "passages_per_s": raw,
            }
        )
        ratio = runs[False]["passages_per_s"] / raw
    lexical_ratio = runs[True]["docs_per_s"] / runs[False]["docs_per_s"]
    print(table(rows, ["run", "documents", "passages", "seconds", "docs_per_s", "passages_per_s"]))
    if ratio is not None:
        print(f"dense-only vs raw encode: {ratio:.3f} (target >= 0.9)")
    print(f"docs/s with the lexical index vs without: {lexical_ratio:.3f} (target >= 0.9)")
    path = write_json(
        "indexing-throughput",
        {
            "corpus": str(corpus),
            "documents": runs[False]["documents"],
            "rows": rows,
            "ratio": ratio,
            "lexical_ratio": lexical_ratio,
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
    """Peak RSS of a fresh process per size, with and without the lexical index."""
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for size in sizes:
            corpus = Path(work) / f"corpus-{size}.jsonl"
            _generate(corpus, size)
            for lexical in ("off", "on"):
                child = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.indexing",
                        "_child",
                        str(corpus),
                        str(Path(work) / f"index-{size}-{lexical}"),
                        str(dim),
                        lexical,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(child.stdout.strip().splitlines()[-1])
                result.pop("embedded", None)
                rows.append(
                    {
                        "documents": size,
                        "lexical": lexical,
                        **result,
                        "index_mb": size * dim * 4 / 2**20,
                    }
                )
                print(
                    f"{size}, lexical {lexical}: peak RSS {result['peak_rss_embed_mb']} MB while "
                    f"embedding, {result['peak_rss_total_mb']} MB with the published index",
                    flush=True,
                )
    columns = ["documents", "lexical", "seconds", "peak_rss_embed_mb", "peak_rss_total_mb"]
    print(table(rows, [*columns, "index_mb"]))
    path = write_json("indexing-memory", {"dim": dim, "rows": rows, "machine": machine()})
    print(f"wrote {path}")


def main() -> None:
    if sys.argv[1:2] == ["_child"]:
        _, _, corpus, index_dir, dim, lexical = sys.argv
        result = asyncio.run(_index_run(Path(corpus), Path(index_dir), int(dim), lexical == "on"))
        result.pop("embedded")
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("corpus", type=Path)
    t.add_argument("--no-raw", action="store_true", help="skip the raw encode baseline")
    m = sub.add_parser("memory")
    m.add_argument("--sizes", default="10000,100000")
    m.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    if args.what == "throughput":
        throughput(args.corpus, raw_encode=not args.no_raw)
    else:
        memory([int(s) for s in args.sizes.split(",")], args.dim)


if __name__ == "__main__":
    main()
