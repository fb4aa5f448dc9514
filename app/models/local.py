"""In-process sentence-transformers backends: the only module that imports torch.

Each model lives on one dedicated worker thread: loading, warm-up and every forward pass run
there, off the event loop (torch releases the GIL), one batch at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch
import transformers
from sentence_transformers import CrossEncoder, SentenceTransformer

from app import metrics
from app.config import EmbedderSettings, ModelSettings, RerankerSettings
from app.errors import InputTooLong, Unavailable
from app.logs import get_logger
from app.models import Embeddings
from app.models.paths import resolve_model_path
from app.types import InputType, ModelInfo, Truncate

log = get_logger(__name__)
T = TypeVar("T")

transformers.logging.disable_progress_bar()
transformers.logging.set_verbosity_error()  # "sequence longer than max length" on token counting
# The libraries print through handlers of their own; send everything through ours (JSON).
transformers.logging.disable_default_handler()
transformers.logging.enable_propagation()
for _library in ("huggingface_hub", "sentence_transformers"):
    logging.getLogger(_library).handlers.clear()
    logging.getLogger(_library).propagate = True
# Hub retries are noise next to the one `model_load_failed` line that says what to do.
logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def resolve_device(setting: str) -> str:
    """`auto` picks the first CUDA device when there is one, the CPU otherwise."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


class _ModelWorker:
    """Loads one model on its own thread and runs every call to it there, in order."""

    def __init__(self, kind: str, settings: ModelSettings, model_name: str, setting_name: str):
        self.kind = kind
        self.model_name = model_name
        self.setting_name = setting_name
        self.device = resolve_device(settings.device)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{kind}-model")
        self._status = "loading"

    @property
    def ready(self) -> bool:
        return self._status == "ready"

    @property
    def status(self) -> str:
        return self._status

    async def load(self, loader: Callable[[], None]) -> None:
        started = time.perf_counter()
        metrics.MODEL_READY.labels(self.kind, self.model_name).set(0)
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, loader)
        except Exception as exc:
            self._status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            log.error(
                "model_load_failed",
                kind=self.kind,
                model=self.model_name,
                error=self._status,
                hint=f"set {self.setting_name} to a local model folder (or a reachable "
                "Hugging Face id)",
            )
            return
        seconds = time.perf_counter() - started
        metrics.MODEL_LOAD_SECONDS.labels(self.kind, self.model_name).set(seconds)
        metrics.MODEL_READY.labels(self.kind, self.model_name).set(1)
        self._status = "ready"
        log.info(
            "model_loaded",
            kind=self.kind,
            model=self.model_name,
            device=self.device,
            seconds=round(seconds, 2),
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if not self.ready:
            raise Unavailable(
                f"{self.kind} model {self.model_name!r} is not loaded ({self._status})"
            )
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _set_truncation_side(tokenizer: Any, truncate: Truncate) -> None:
    # Safe without a lock: only the model's own worker thread tokenizes.
    tokenizer.truncation_side = "left" if truncate is Truncate.START else "right"


class LocalEmbedder:
    """A SentenceTransformer bi-encoder; vectors are L2-normalized."""

    def __init__(self, settings: EmbedderSettings) -> None:
        self._settings = settings
        self._worker = _ModelWorker(
            "embedding", settings, settings.model, "SEMSEARCH_EMBEDDER_MODEL"
        )
        self._model: SentenceTransformer | None = None
        self._info = ModelInfo(
            model_id=settings.model,
            kind="embedding",
            dimension=None,
            max_tokens=settings.max_seq_length or 0,
            backend="sentence-transformers",
            device=self._worker.device,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def ready(self) -> bool:
        return self._worker.ready

    @property
    def status(self) -> str:
        return self._worker.status

    async def start(self) -> None:
        await self._worker.load(self._load)

    async def stop(self) -> None:
        self._worker.stop()

    def _load(self) -> None:
        device = self._worker.device
        model = SentenceTransformer(resolve_model_path(self._settings.model), device=device)
        if self._settings.max_seq_length:
            model.max_seq_length = self._settings.max_seq_length
        if device.startswith("cuda"):
            model.half()
        model.eval()
        model.encode(["warm-up"], show_progress_bar=False)
        self._model = model
        self._info = ModelInfo(
            model_id=self._settings.model,
            kind="embedding",
            dimension=int(model.get_embedding_dimension() or 0),
            max_tokens=int(model.max_seq_length or 0),
            backend="sentence-transformers",
            device=device,
        )

    async def embed(
        self, texts: Sequence[str], input_type: InputType, truncate: Truncate = Truncate.NONE
    ) -> Embeddings:
        if not texts:
            return Embeddings(np.zeros((0, self._info.dimension or 0), np.float32), 0)
        return await self._worker.run(self._encode, list(texts), input_type, truncate)

    def _encode(self, texts: list[str], input_type: InputType, truncate: Truncate) -> Embeddings:
        assert self._model is not None
        prefix = (
            self._settings.query_prefix
            if input_type is InputType.QUERY
            else self._settings.passage_prefix
        )
        if prefix:
            texts = [prefix + t for t in texts]
        window = self._info.max_tokens
        tokenizer = self._model.tokenizer
        lengths = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]
        if truncate is Truncate.NONE:
            for i, n in enumerate(lengths):
                if n > window:
                    raise InputTooLong(
                        f"input {i} is {n} tokens; the model reads at most {window}. Shorten "
                        "it, or ask for truncate END or START",
                        field=f"input[{i}]",
                    )
        _set_truncation_side(tokenizer, truncate)
        started = time.perf_counter()
        vectors = self._model.encode(
            texts,
            batch_size=self._settings.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        metrics.MODEL_COMPUTE_LATENCY.labels("embedding").observe(time.perf_counter() - started)
        metrics.MODEL_ITEMS.labels("embedding").inc(len(texts))
        return Embeddings(
            vectors=np.ascontiguousarray(vectors, dtype=np.float32),
            prompt_tokens=sum(min(n, window) for n in lengths),
        )


class LocalReranker:
    """A sentence-transformers CrossEncoder returning raw logits (no sigmoid)."""

    def __init__(self, settings: RerankerSettings) -> None:
        self._settings = settings
        self._worker = _ModelWorker(
            "reranker", settings, settings.model, "SEMSEARCH_RERANKER_MODEL"
        )
        self._model: CrossEncoder | None = None
        self._info = ModelInfo(
            model_id=settings.model,
            kind="reranker",
            dimension=None,
            max_tokens=settings.max_length,
            backend="sentence-transformers",
            device=self._worker.device,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def ready(self) -> bool:
        return self._worker.ready

    @property
    def status(self) -> str:
        return self._worker.status

    async def start(self) -> None:
        await self._worker.load(self._load)

    async def stop(self) -> None:
        self._worker.stop()

    def _load(self) -> None:
        device = self._worker.device
        model = CrossEncoder(
            resolve_model_path(self._settings.model),
            device=device,
            max_length=self._settings.max_length,
        )
        if device.startswith("cuda"):
            model.half()
        model.eval()
        model.predict([("warm-up", "warm-up")], show_progress_bar=False)
        self._model = model

    async def score(
        self, query: str, passages: Sequence[str], truncate: Truncate = Truncate.END
    ) -> list[float]:
        if not passages:
            return []
        return await self._worker.run(self._score, query, list(passages), truncate)

    def _score(self, query: str, passages: list[str], truncate: Truncate) -> list[float]:
        assert self._model is not None
        window = self._settings.max_length
        tokenizer = self._model.tokenizer
        if truncate is Truncate.NONE:
            encoded = tokenizer([query] * len(passages), passages, truncation=False)
            for i, ids in enumerate(encoded["input_ids"]):
                if len(ids) > window:
                    raise InputTooLong(
                        f"passage {i} with the query is {len(ids)} tokens; the model reads at "
                        f"most {window}. Shorten it, or ask for truncate END",
                        field=f"passages[{i}]",
                    )
        _set_truncation_side(tokenizer, truncate)
        started = time.perf_counter()
        logits = self._model.predict(
            [(query, p) for p in passages],
            batch_size=self._settings.batch_size,
            activation_fn=torch.nn.Identity(),
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        metrics.MODEL_COMPUTE_LATENCY.labels("reranker").observe(time.perf_counter() - started)
        metrics.MODEL_ITEMS.labels("reranker").inc(len(passages))
        return [float(x) for x in np.asarray(logits, dtype=np.float32).reshape(-1)]
