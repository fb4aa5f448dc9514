"""In-process models: tokenize once, batch dynamically, run an engine on a worker thread.

    texts --TextTokenizer--> ids --BatchQueue--> padded batches --Engine--> vectors / logits

Each model owns one worker thread: loading, warm-up and every forward pass run there, off the
event loop (torch and onnxruntime release the GIL). This is the only module, with
`app.models.engines`, that imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import transformers

from app import metrics
from app.config import EmbedderSettings, ModelSettings, RerankerSettings
from app.errors import ModelFailure, Unavailable
from app.extras import installed
from app.logs import get_logger
from app.models import Embeddings
from app.models.batch_limits import BatchLimits, resolve_workers
from app.models.batching import BatchQueue
from app.models.cpu import cpu_threads
from app.models.engines import (
    Engine,
    SplitEngine,
    ThreadShare,
    TorchEngine,
    bf16_min_tokens,
    lower_thread_priority,
    resolve_device,
    resolve_dtype,
    use_cpu_threads,
)
from app.models.paths import model_folder
from app.models.tokens import (
    Encoded,
    TextTokenizer,
    configured_window,
    tokenizer_for,
    within_positions,
)
from app.types import FloatArray, InputType, ModelInfo, Truncate

log = get_logger(__name__)

transformers.logging.disable_progress_bar()
# The libraries print through handlers of their own; send everything through ours (JSON).
transformers.logging.disable_default_handler()
transformers.logging.enable_propagation()
for _library in ("huggingface_hub", "sentence_transformers"):
    logging.getLogger(_library).handlers.clear()
    logging.getLogger(_library).propagate = True
# Hub retries are noise next to the one `model_load_failed` line that says what to do.
logging.getLogger("huggingface_hub").setLevel(logging.ERROR)

# Texts longer than this (in total) are tokenized on a thread, not on the event loop.
_INLINE_TOKENIZE_CHARS = 4_000
# Consecutive failed batches after which the model counts as broken (/health turns 503).
_UNHEALTHY_AFTER = 3
# The backend's label while float32 batches wait for their ONNX export (float32_on_onnx).
_ONNX_PENDING = " (float32 to onnx: pending)"


@dataclass(frozen=True)
class _Loaded:
    tokenizer: TextTokenizer
    engine: Engine
    info: ModelInfo
    folder: Path


class _LocalModel:
    """Lifecycle shared by the embedder and the reranker: load, warm up, batch, health."""

    kind = "model"
    output = ""  # the sentence-transformers output the engines return
    setting_name = "SEMSEARCH_MODEL"

    def __init__(self, settings: ModelSettings, model: str) -> None:
        self._settings = settings
        self._model_name = model
        self._device = resolve_device(settings.device)
        self._workers = resolve_workers(
            settings.workers, self._device, settings.backend, cpu_threads(settings.threads)
        )
        self._executors = [
            ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=f"{self.kind}-model-{worker}",
                initializer=lower_thread_priority,  # before the engine starts its own threads
                initargs=(settings.compute_niceness,),
            )
            for worker in range(self._workers)
        ]
        # batches computing at once split the CPU threads (torch sets them per thread)
        shared = (
            self._workers > 1
            and self._device == "cpu"
            and settings.backend == "sentence-transformers"
        )
        self._threads = ThreadShare(cpu_threads(settings.threads) if shared else 0)
        self._status = "loading"
        self._failures = 0
        self._loaded: _Loaded | None = None
        self._queue: BatchQueue[Encoded, Any] | None = None
        self._onnx: asyncio.Task[None] | None = None
        self._info = ModelInfo(model, self.kind, None, 0, settings.backend, self._device)

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def ready(self) -> bool:
        return self._status == "ready"

    @property
    def healthy(self) -> bool:
        """False once batches keep failing: the model is loaded but unusable."""
        return self._failures < _UNHEALTHY_AFTER

    @property
    def status(self) -> str:
        return self._status if self.healthy else f"unhealthy: {self._failures} failed batches"

    async def start(self) -> None:
        """Load on the worker thread; never raises (a failure shows in `status`)."""
        started = time.perf_counter()
        metrics.MODEL_READY.labels(self.kind, self._model_name).set(0)
        loop = asyncio.get_running_loop()
        try:
            self._loaded = await loop.run_in_executor(self._executors[0], self._load_and_warm_up)
        except Exception as exc:
            self._status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            log.error(
                "model_load_failed",
                kind=self.kind,
                model=self._model_name,
                error=self._status,
                hint=f"set {self.setting_name} to a local model folder (or a reachable "
                "Hugging Face id)",
            )
            return
        self._info = self._loaded.info
        settings = self._settings
        self._queue = BatchQueue(
            self._guarded(self._compute),
            size_of=len,
            executors=self._executors,
            limits=BatchLimits.from_settings(settings, self._info.device),
            kind=self.kind,
        )
        self._queue.start()
        if isinstance(self._loaded.engine, SplitEngine):
            self._onnx = asyncio.create_task(
                self._attach_onnx(self._loaded.engine, self._loaded.folder),
                name=f"{self.kind}-onnx-float32",
            )
        seconds = time.perf_counter() - started
        metrics.MODEL_LOAD_SECONDS.labels(self.kind, self._model_name).set(seconds)
        metrics.MODEL_READY.labels(self.kind, self._model_name).set(1)
        self._status = "ready"
        log.info(
            "model_loaded",
            kind=self.kind,
            model=self._model_name,
            backend=self._info.backend,
            device=self._info.device,
            seconds=round(seconds, 2),
        )

    async def stop(self) -> None:
        if self._onnx is not None:
            self._onnx.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._onnx
        if self._queue is not None:
            await self._queue.stop()
        for executor in self._executors:
            executor.shutdown(wait=False, cancel_futures=True)

    def _load_and_warm_up(self) -> _Loaded:
        folder = model_folder(self._model_name)
        loaded = self._load(folder)
        warm = loaded.tokenizer.encode(["warm-up"], Truncate.END)
        loaded.engine(loaded.tokenizer.pad(warm))
        if self._device.startswith("cuda"):  # let cuDNN/cuBLAS pick kernels for a long batch too
            long = loaded.tokenizer.encode(["warm " * loaded.tokenizer.window], Truncate.END)
            loaded.engine(loaded.tokenizer.pad(long * 8))
        return loaded

    def _load(self, folder: Path) -> _Loaded:
        raise NotImplementedError

    def _engine(self, folder: Path, load_torch: Callable[[str], Any]) -> tuple[Engine, str]:
        """The configured engine for `folder`, and a label for /info."""
        backend = self._settings.backend
        if backend in ("onnx", "onnx-int8"):
            from app.models.onnx import OnnxEngine, export, exported_path

            path = exported_path(
                folder, self.kind, backend == "onnx-int8", self._settings.onnx_cache_dir
            )
            if not path.is_file():  # a read-only cache with the export in it is enough
                export(folder, self.kind, path)
            threads = cpu_threads(self._settings.threads)
            return OnnxEngine(path, self._device, self.output, threads), backend
        if self._device == "cpu":
            use_cpu_threads(self._settings.threads)
        settings = self._settings
        dtype = resolve_dtype(settings.dtype, self._device)
        mixed = bf16_min_tokens(settings.dtype, dtype, self._device, settings.bf16_min_batch_tokens)
        engine = TorchEngine(load_torch(self._device), self.output, self._device, dtype, mixed)
        label = f"torch-float32+bfloat16>={mixed}" if mixed else f"torch-{dtype}"
        float32_below = mixed or (sys.maxsize if dtype == "float32" else 0)
        if (
            settings.float32_on_onnx
            and self._device == "cpu"
            and float32_below
            and installed("onnx")
        ):  # ONNX Runtime takes the float32 batches once exported (_attach_onnx)
            return SplitEngine(engine, float32_below), label + _ONNX_PENDING
        return engine, label

    async def _attach_onnx(self, split: SplitEngine, folder: Path) -> None:
        """Move `split`'s float32 batches to ONNX Runtime once the model is exported and
        loaded. Torch serves them until then, and for good if any of it fails."""
        from app.models.onnx import load_float32

        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            onnx = await load_float32(
                folder, self.kind, self.output, self._settings, self._executors[-1]
            )
            large = split.large
            if split.below == sys.maxsize:  # every batch is float32: torch's weights can go
                large = onnx
            elif isinstance(large, TorchEngine):
                # what is left for torch runs in bfloat16 only: hold the weights in it
                large = await loop.run_in_executor(self._executors[-1], large.in_bfloat16)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("onnx_float32_unavailable", kind=self.kind, error=repr(exc))
            self._info = dataclasses.replace(
                self._info, backend=self._info.backend.removesuffix(_ONNX_PENDING)
            )
            return
        split.small, split.large = onnx, large
        below = "" if split.below == sys.maxsize else f"<{split.below}"
        label = f"onnx-float32{below}+torch-bfloat16" if below else "onnx-float32"
        self._info = dataclasses.replace(self._info, backend=label)
        log.info(
            "onnx_float32_attached",
            kind=self.kind,
            backend=label,
            seconds=round(time.perf_counter() - started, 2),
        )

    def _guarded(
        self, compute: Callable[[list[Encoded]], list[Any]]
    ) -> Callable[[list[Encoded]], list[Any]]:
        def run(batch: list[Encoded]) -> list[Any]:
            try:
                with self._threads.share():
                    result = compute(batch)
            except Exception as exc:
                self._failures += 1
                raise ModelFailure(f"{self.kind} model failed on a batch: {exc!r}") from exc
            self._failures = 0
            return result

        return run

    def _compute(self, batch: list[Encoded]) -> list[Any]:
        raise NotImplementedError

    def _require(self) -> tuple[_Loaded, BatchQueue[Encoded, Any]]:
        if self._loaded is None or self._queue is None or not self.ready:
            raise Unavailable(
                f"{self.kind} model {self._model_name!r} is not loaded ({self._status})"
            )
        return self._loaded, self._queue

    async def _tokenize(self, fn: Callable[[], list[Encoded]], chars: int) -> list[Encoded]:
        if chars <= _INLINE_TOKENIZE_CHARS:
            return fn()
        return await asyncio.to_thread(fn)  # the Rust tokenizer releases the GIL


class LocalEmbedder(_LocalModel):
    """A sentence-transformers bi-encoder; vectors are L2-normalized."""

    kind = "embedding"
    output = "sentence_embedding"
    setting_name = "SEMSEARCH_EMBEDDER_MODEL"

    def __init__(self, settings: EmbedderSettings) -> None:
        super().__init__(settings, settings.model)
        self._embedder_settings = settings

    def _load(self, folder: Path) -> _Loaded:
        from sentence_transformers import SentenceTransformer

        settings = self._embedder_settings
        window = within_positions(folder, settings.max_seq_length or configured_window(folder))

        def load_torch(device: str) -> Any:
            model = SentenceTransformer(str(folder), device=device)
            model.max_seq_length = window
            return model

        engine, backend = self._engine(folder, load_torch)
        tokenizer = tokenizer_for(folder, window)
        dimension = int(engine(tokenizer.pad(tokenizer.encode(["x"], Truncate.END))).shape[1])
        info = ModelInfo(settings.model, self.kind, dimension, window, backend, self._device)
        return _Loaded(tokenizer, engine, info, folder)

    def _compute(self, batch: list[Encoded]) -> list[FloatArray]:
        loaded = self._loaded
        assert loaded is not None
        return list(loaded.engine(loaded.tokenizer.pad(batch)))

    async def embed(
        self,
        texts: Sequence[str],
        input_type: InputType,
        truncate: Truncate = Truncate.NONE,
        normalize: bool = True,
    ) -> Embeddings:
        loaded, queue = self._require()
        prefix = (
            self._embedder_settings.query_prefix
            if input_type is InputType.QUERY
            else self._embedder_settings.passage_prefix
        )
        if not texts:
            return Embeddings(np.zeros((0, self._info.dimension or 0), np.float32), 0)
        encoded = await self._tokenize(
            lambda: loaded.tokenizer.encode(texts, truncate, prefix=prefix),
            sum(map(len, texts)) + len(prefix) * len(texts),
        )
        vectors = np.stack(await queue.submit(encoded)).astype(np.float32)
        if normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return Embeddings(vectors, sum(len(e) for e in encoded))


class LocalReranker(_LocalModel):
    """A sentence-transformers cross-encoder returning raw logits (no sigmoid)."""

    kind = "reranker"
    output = "scores"
    setting_name = "SEMSEARCH_RERANKER_MODEL"

    def __init__(self, settings: RerankerSettings) -> None:
        super().__init__(settings, settings.model)
        self._reranker_settings = settings

    def _load(self, folder: Path) -> _Loaded:
        from sentence_transformers import CrossEncoder

        window = within_positions(folder, self._reranker_settings.max_length)

        def load_torch(device: str) -> Any:
            return CrossEncoder(str(folder), device=device, max_length=window)

        engine, backend = self._engine(folder, load_torch)
        info = ModelInfo(
            self._reranker_settings.model, self.kind, None, window, backend, self._device
        )
        return _Loaded(tokenizer_for(folder, window), engine, info, folder)

    def _compute(self, batch: list[Encoded]) -> list[float]:
        loaded = self._loaded
        assert loaded is not None
        return [float(x) for x in loaded.engine(loaded.tokenizer.pad(batch))]

    async def score(
        self, query: str, passages: Sequence[str], truncate: Truncate = Truncate.END
    ) -> list[float]:
        loaded, queue = self._require()
        if not passages:
            return []
        encoded = await self._tokenize(
            lambda: loaded.tokenizer.encode_pairs(query, passages, truncate),
            len(query) * len(passages) + sum(map(len, passages)),
        )
        scores: list[float] = await queue.submit(encoded)
        return scores
