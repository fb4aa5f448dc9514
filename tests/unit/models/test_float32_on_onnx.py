"""Float32 batches move to ONNX Runtime once the model is exported (`float32_on_onnx`).

The export runs in a child process after the model is ready; torch serves until the export is
loaded, and for good when it fails. Small batches then run on the fused graph, large ones stay
on torch, and both give the same vectors and scores.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from app.config import EmbedderSettings, RerankerSettings
from app.models import build_embedder, build_reranker
from app.models import onnx as onnx_module
from app.models.engines import Engine, SplitEngine, TorchEngine
from app.models.local import LocalEmbedder, LocalReranker
from app.models.tokens import Padded
from app.types import FloatArray, InputType

pytestmark = pytest.mark.slow

ATTACH_TIMEOUT_S = 240  # a cold export of MiniLM takes ~15 s of CPU; a busy CI host, more


async def attached(model: LocalEmbedder | LocalReranker) -> SplitEngine:
    """The model's split engine, once its float32 batches run on ONNX Runtime."""
    deadline = time.monotonic() + ATTACH_TIMEOUT_S
    while not model.info.backend.startswith("onnx-float32"):
        assert time.monotonic() < deadline, f"not attached: {model.info.backend}"
        await asyncio.sleep(0.2)
    engine = model._loaded.engine if model._loaded else None
    assert isinstance(engine, SplitEngine) and engine.small is not None
    return engine


def counted(split: SplitEngine) -> list[int]:
    """Padded sizes of the batches that run on `split`'s small engine from now on."""
    sizes: list[int] = []
    small = split.small
    assert small is not None

    def run(batch: Padded) -> FloatArray:
        sizes.append(int(batch.input_ids.size))
        return small(batch)

    split.small = run
    return sizes


def exporting_children(cache: Path) -> list[int]:
    """Processes exporting into `cache` (children of this test process)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"app.models.onnx" in command and any(str(cache).encode() in a for a in command):
            found.append(int(pid))
    return found


def test_split_engine_sends_small_batches_to_the_attached_engine() -> None:
    def engine(label: float) -> Engine:
        return lambda batch: np.full((len(batch.input_ids), 1), label, np.float32)

    def batch(items: int, tokens: int) -> Padded:
        ids = np.ones((items, tokens), np.int64)
        return Padded(ids, ids, np.zeros_like(ids))

    split = SplitEngine(engine(1.0), below=64)
    assert split(batch(1, 8))[0, 0] == 1.0  # nothing attached yet: all on the large engine
    split.small = engine(2.0)
    assert split(batch(1, 8))[0, 0] == 2.0
    assert split(batch(7, 9))[0, 0] == 2.0  # 63 padded tokens
    assert split(batch(8, 8))[0, 0] == 1.0  # 64: from here on, the large engine
    assert split(batch(1, 200))[0, 0] == 1.0


async def test_float32_batches_move_to_onnx_and_give_the_same_answers(
    tiny_bi_encoder: Path, tiny_cross_encoder: Path, tmp_path: Path
) -> None:
    # below 64 padded tokens on ONNX Runtime, from there torch: bf16 on a CPU with bf16
    # units, float32 on others (which then run every batch on ONNX Runtime)
    embedder = build_embedder(
        EmbedderSettings(
            model=str(tiny_bi_encoder),
            float32_on_onnx=True,
            onnx_cache_dir=tmp_path,
            bf16_min_batch_tokens=64,
        )
    )
    reranker = build_reranker(
        RerankerSettings(
            model=str(tiny_cross_encoder),
            max_length=64,
            float32_on_onnx=True,
            onnx_cache_dir=tmp_path,
            bf16_min_batch_tokens=64,
        )
    )
    torch_embedder = build_embedder(EmbedderSettings(model=str(tiny_bi_encoder), dtype="float32"))
    torch_reranker = build_reranker(
        RerankerSettings(model=str(tiny_cross_encoder), max_length=64, dtype="float32")
    )
    models = (embedder, reranker, torch_embedder, torch_reranker)
    for model in models:
        await model.start()
        assert model.ready, model.status
    assert isinstance(embedder, LocalEmbedder) and isinstance(reranker, LocalReranker)
    # torch serves while the export runs, and says so
    assert embedder.info.backend.endswith("(float32 to onnx: pending)")
    before = await embedder.embed(["cats purr"], InputType.QUERY)

    split = await attached(embedder)
    small = counted(split)
    query = await embedder.embed(["cats purr"], InputType.QUERY)
    reference = await torch_embedder.embed(["cats purr"], InputType.QUERY)
    np.testing.assert_allclose(query.vectors, reference.vectors, atol=1e-4)
    np.testing.assert_allclose(before.vectors, reference.vectors, atol=1e-2)  # bf16 or not
    assert len(small) == 1 and small[0] < 64
    passages = [f"passage {i} " + "word " * 20 for i in range(6)]  # 6 x ~25 tokens
    large = await embedder.embed(passages, InputType.PASSAGE)
    expected = await torch_embedder.embed(passages, InputType.PASSAGE)
    assert np.sum(large.vectors * expected.vectors, axis=1).min() > 0.999
    if split.below < 1_000_000:  # a CPU with bf16 units: the large batch stayed on torch,
        assert len(small) == 1  # which now holds its weights in bfloat16
        assert isinstance(split.large, TorchEngine)
        assert split.large.precision(Padded(*(np.ones((1, 4), np.int64),) * 3)) == "bfloat16"
    assert "onnx-float32" in embedder.info.backend

    rerank_split = await attached(reranker)
    pairs = counted(rerank_split)
    scores = await reranker.score("cats", ["cats purr"])
    torch_scores = await torch_reranker.score("cats", ["cats purr"])
    np.testing.assert_allclose(scores, torch_scores, atol=1e-4)
    assert len(pairs) == 1
    for model in models:
        await model.stop()


async def test_a_failed_export_leaves_torch_serving(tiny_bi_encoder: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the export cache should be")
    embedder = build_embedder(
        EmbedderSettings(model=str(tiny_bi_encoder), float32_on_onnx=True, onnx_cache_dir=blocked)
    )
    await embedder.start()
    assert isinstance(embedder, LocalEmbedder)
    task = embedder._onnx
    assert task is not None
    await asyncio.wait_for(task, ATTACH_TIMEOUT_S)  # ends: the child failed
    assert embedder.info.backend.startswith("torch") and "pending" not in embedder.info.backend
    out = await embedder.embed(["still answering"], InputType.QUERY)
    assert out.vectors.shape == (1, 32)
    await embedder.stop()


async def test_stopping_the_model_stops_its_export(tiny_bi_encoder: Path, tmp_path: Path) -> None:
    embedder = build_embedder(
        EmbedderSettings(model=str(tiny_bi_encoder), float32_on_onnx=True, onnx_cache_dir=tmp_path)
    )
    await embedder.start()
    deadline = time.monotonic() + 30
    while not exporting_children(tmp_path):
        assert time.monotonic() < deadline, "no export started"
        await asyncio.sleep(0.05)
    await embedder.stop()
    assert exporting_children(tmp_path) == []
    assert not list(tmp_path.rglob("*.onnx"))  # nothing half-written left behind
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_processes_exporting_one_model_take_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported: list[int] = []

    def slow_export(folder: Path, kind: str, target: Path) -> None:
        exported.append(threading.get_ident())
        time.sleep(0.3)
        target.parent.mkdir(parents=True)
        target.write_bytes(b"graph")

    monkeypatch.setattr(onnx_module, "_export", slow_export)
    target = tmp_path / "cache" / "key" / "model.onnx"
    # flock is per open file: two threads stand for two processes
    threads = [
        threading.Thread(target=onnx_module.export, args=(tmp_path, "embedding", target))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(exported) == 1
    assert target.read_bytes() == b"graph"


async def test_real_minilm_queries_run_on_onnx_with_the_same_vectors(tmp_path: Path) -> None:
    embedder = build_embedder(EmbedderSettings(float32_on_onnx=True, onnx_cache_dir=tmp_path))
    reference = build_embedder(EmbedderSettings(dtype="float32"))
    for model in (embedder, reference):
        await model.start()
        assert model.ready, model.status
    assert isinstance(embedder, LocalEmbedder)
    small = counted(await attached(embedder))
    queries = ["How many people live in Berlin?", "cells that repair damaged tissue"]
    for query in queries:
        ours = await embedder.embed([query], InputType.QUERY)
        expected = await reference.embed([query], InputType.QUERY)
        np.testing.assert_allclose(ours.vectors, expected.vectors, atol=1e-4)
    assert len(small) == len(queries)
    for model in (embedder, reference):
        await model.stop()


async def test_with_dtype_float32_every_batch_moves_and_torch_lets_go(
    tiny_bi_encoder: Path, tmp_path: Path
) -> None:
    settings = EmbedderSettings(
        model=str(tiny_bi_encoder), dtype="float32", float32_on_onnx=True, onnx_cache_dir=tmp_path
    )
    embedder = build_embedder(settings)
    await embedder.start()
    assert isinstance(embedder, LocalEmbedder)
    split = await attached(embedder)
    assert embedder.info.backend == "onnx-float32"
    assert split.large is split.small  # no torch weights kept for batches that never come
    out = await embedder.embed(
        [f"passage {i} " + "word " * 60 for i in range(40)], InputType.PASSAGE
    )
    assert out.vectors.shape == (40, 32)
    await embedder.stop()
