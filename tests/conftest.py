"""Shared fixtures: fake models, a tiny real cross-encoder, a real redis-server, collections."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import GatewaySettings
from app.index.faiss.build import FaissOptions
from app.index.faiss.index import FaissIndex
from app.index.qdrant.connection import QdrantOptions
from app.ingest.indexer import index_documents
from app.models.fake import FakeEmbedder, FakeReranker
from app.types import Document
from harness import processes
from harness.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
# Real reranker weights trained in this workspace (see ../shared/models/README.md); a clone
# elsewhere does not have them, and the tests that need them say so when they skip.
TRAINED_RERANKER = Path(
    os.environ.get(
        "SEMSEARCH_TEST_RERANKER_DIR",
        ROOT.parent / "shared" / "models" / "semsearch-ce-minilm-l6-scifact",
    )
)

# Hub lookups fail (slowly, with retries) on machines without internet; tests never need them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`configure_logging` (the CLI calls it) changes process-wide state: undo it per test."""
    import logging

    import structlog

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


# Models in tests stay on torch: each start would otherwise export the model to ONNX in a
# child process (seconds of CPU, killed again when a short test stops the model). The move
# to ONNX Runtime has tests of its own (tests/unit/models/test_float32_on_onnx.py).
NO_ONNX_EXPORTS = {
    "SEMSEARCH_EMBEDDER_FLOAT32_ON_ONNX": "false",
    "SEMSEARCH_RERANKER_FLOAT32_ON_ONNX": "false",
}
processes.CHILD_DEFAULTS.update(NO_ONNX_EXPORTS)


@pytest.fixture(autouse=True)
def _hermetic_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from each test, never from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("SEMSEARCH_") and name != "SEMSEARCH_TEST_RERANKER_DIR":
            monkeypatch.delenv(name)
    for name, value in NO_ONNX_EXPORTS.items():
        monkeypatch.setenv(name, value)


def faiss_options(**settings: Any) -> FaissOptions:
    """FAISS options from the settings' defaults, with `settings` (SEMSEARCH_* names) changed."""
    return FaissOptions.from_settings(GatewaySettings(**settings))


def qdrant_options(**settings: Any) -> QdrantOptions:
    """Qdrant options from the settings' defaults, with `settings` (SEMSEARCH_* names) changed:
    `qdrant_path=` for embedded local mode, `qdrant_url=` for a server."""
    return QdrantOptions.from_settings(GatewaySettings(**settings))


def wait_for_port(
    port: int, timeout_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port} after {timeout_s}s")


def load_sample_documents() -> list[Document]:
    docs = []
    for line in (DATA / "corpus.jsonl").read_text().splitlines():
        raw = json.loads(line)
        docs.append(Document(raw["id"], raw["text"], raw["title"], raw["metadata"]))
    return docs


def load_sample_queries() -> list[dict[str, str]]:
    return [json.loads(line) for line in (DATA / "queries.jsonl").read_text().splitlines()]


@pytest.fixture
def fake_embedder() -> FakeEmbedder:
    return FakeEmbedder(model_id="fake-embedder")


@pytest.fixture
def fake_reranker() -> FakeReranker:
    return FakeReranker(model_id="fake-reranker")


SMALL_DOCS = [
    Document(
        "berlin",
        "Berlin is the capital of Germany and has 3.7 million inhabitants.",
        "Berlin",
        {"lang": "en", "topic": "city"},
    ),
    Document(
        "paris",
        "Paris is the capital and largest city of France.",
        "Paris",
        {"lang": "en", "topic": "city"},
    ),
    Document(
        "cats",
        "Cats purr when they are content and sometimes when they are stressed.",
        "Cats",
        {"lang": "en", "topic": "animal"},
    ),
    Document(
        "rust",
        "Rust is a systems programming language focused on memory safety.",
        "",
        {"lang": "en", "topic": "software"},
    ),
    Document(
        "python",
        "Python is a programming language that emphasises readability.",
        "",
        {"lang": "en", "topic": "software"},
    ),
]


async def build_collection(
    index_dir: Path, name: str, docs: list[Document], embedder: FakeEmbedder
) -> FaissIndex:
    """Index `docs` into a new collection with `embedder` and return it opened."""
    index = await FaissIndex.create(
        index_dir, name, embedder.info.model_id, embedder.info.dimension or 0, faiss_options()
    )
    await index_documents(docs, index, embedder, batch_size=2)
    return index


def drop_lexical(index_dir: Path, name: str) -> None:
    """Make collection `name` look published before lexical search existed: its generations
    lose their lexical index (it then serves dense only)."""
    for folder in (index_dir / name / "generations").glob("gen-*/lexical"):
        shutil.rmtree(folder)


@pytest.fixture
async def dense_only_collection(small_collection: Path) -> Path:
    """`small_collection` as published before lexical search: no lexical index."""
    drop_lexical(small_collection, "default")
    return small_collection


@pytest.fixture
async def small_collection(tmp_path: Path, fake_embedder: FakeEmbedder) -> AsyncIterator[Path]:
    """An index dir holding collection `default` (SMALL_DOCS, fake embedder); yields the dir."""
    index = await build_collection(tmp_path / "index", "default", SMALL_DOCS, fake_embedder)
    await index.close()
    return tmp_path / "index"


def _tiny_bert(**extra: Any) -> tuple[Any, Any]:
    """The MiniLM tokenizer and a 2-layer, 32-wide BERT config, seeded: tiny real models."""
    import torch
    from transformers import BertConfig, BertTokenizerFast

    from app.models.paths import resolve_model_path

    tokenizer = BertTokenizerFast.from_pretrained(
        resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        **extra,
    )
    return tokenizer, config


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real BERT cross-encoder (random weights, 2 small layers) with the MiniLM tokenizer.

    It runs the real loading and scoring code in seconds; its scores mean nothing.
    """
    from transformers import BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-cross-encoder")
    tokenizer, config = _tiny_bert(num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bi_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-transformers bi-encoder (tiny random BERT, mean pooling, normalize) with the
    MiniLM tokenizer: the real loading, batching and pooling code in milliseconds per batch."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertModel

    root = tmp_path_factory.mktemp("tiny-bi-encoder")
    tokenizer, config = _tiny_bert()
    BertModel(config).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    transformer = Transformer(str(root / "bert"), max_seq_length=128)
    model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"), Normalize()]
    )
    model.save(str(root / "model"))
    return root / "model"


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A real redis-server on loopback, no persistence; waits until it accepts connections."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed; `make test` installs it (apt-get)")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, 10, proc)
    return proc


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port for the whole session."""
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
