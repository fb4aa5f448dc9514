"""Engines run one padded batch through a model on the model's worker thread.

`TorchEngine` runs a sentence-transformers model (bi- or cross-encoder) with torch;
`app.models.onnx.OnnxEngine` runs an exported graph with ONNX Runtime. Both take the same
`Padded` arrays and return float32 numpy arrays, so everything around them is shared.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch

from app.logs import get_logger
from app.models.cpu import cpu_has_bf16, cpu_threads
from app.models.tokens import Padded
from app.types import FloatArray

log = get_logger(__name__)


class Engine(Protocol):
    """(batch) -> outputs: sentence embeddings (n, d) or relevance logits (n,)."""

    def __call__(self, batch: Padded) -> FloatArray: ...


def resolve_device(setting: str) -> str:
    """`auto` picks the first CUDA device when there is one, the CPU otherwise."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def resolve_dtype(setting: str, device: str) -> str:
    """`auto`: float16 on a GPU; bfloat16 on a CPU with bf16 units (same retrieval quality,
    measured in bench/README.md, ~1.7x faster); float32 on other CPUs (bf16 would be slower)."""
    if setting != "auto":
        return setting
    if device.startswith("cuda"):
        return "float16"
    return "bfloat16" if cpu_has_bf16() else "float32"


def bf16_min_tokens(setting: str, dtype: str, device: str, configured: int) -> int:
    """Padded tokens from which a batch runs in bfloat16 (smaller ones run in float32).

    Only `auto` on a CPU mixes precisions: autocast converts the weights at every call, a fixed
    cost that a batch of one query does not win back (measured: 14.5 ms in bf16 vs 9.9 ms in
    float32 for one query on a bf16 CPU), while large batches run 1.7x faster. A dtype set
    explicitly applies to every batch (0)."""
    if setting != "auto" or dtype != "bfloat16" or device.startswith("cuda"):
        return 0
    return configured


def use_cpu_threads(setting: int) -> None:
    torch.set_num_threads(cpu_threads(setting))


class ThreadShare:
    """torch's CPU threads split between the batches computing at once: a batch starting
    alone runs on all `threads`, one starting beside another on its share (torch keeps the
    count per calling thread). A batch keeps the count it started with, so for a while two
    batches may use one thread more than there are: that is how the gains in
    `app.models.batching` (SIDE_BY_SIDE_AFTER) were measured. 0 leaves the count alone (a
    GPU, ONNX Runtime's own pools)."""

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._running = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def share(self) -> Iterator[None]:
        if not self._threads:
            yield
            return
        with self._lock:
            self._running += 1
            mine = max(1, self._threads // self._running)
        try:
            torch.set_num_threads(mine)
            yield
        finally:
            with self._lock:
                self._running -= 1


def lower_thread_priority(niceness: int) -> None:
    """Run the calling thread `niceness` steps nicer than now (Linux: a thread has its own
    nice value, and the threads it starts, torch's and ONNX Runtime's pools among them,
    inherit it). Meant for a model's worker thread, before the model is loaded."""
    if niceness <= 0 or sys.platform != "linux":
        return
    thread = threading.get_native_id()
    try:
        now = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, now + niceness))
    except OSError as exc:  # e.g. a seccomp profile refusing it: the model still works
        log.warning("compute_priority_unchanged", niceness=niceness, error=repr(exc))


class TorchEngine:
    """A sentence-transformers model (an nn.Sequential of modules) run on padded batches."""

    def __init__(
        self,
        model: torch.nn.Module,
        output: str,
        device: str,
        dtype: str,
        bf16_min_tokens: int = 0,
    ) -> None:
        """`bf16_min_tokens`: with dtype bfloat16, batches of fewer padded tokens run in
        float32 (see `bf16_min_tokens()`); autocast keeps float32 weights, so the choice is
        free per batch."""
        self._model = model
        self._output = output  # "sentence_embedding" or "scores"
        self._device = torch.device(device)
        if dtype == "float16":
            model.half()  # on GPUs; autocast would keep fp32 weights and convert per op
        weights = next(model.parameters()).dtype
        self._autocast = dtype == "bfloat16" and weights != torch.bfloat16
        self._bf16_min_tokens = bf16_min_tokens
        model.eval()

    def precision(self, batch: Padded) -> str:
        """The precision `batch` runs in."""
        if self._autocast and batch.input_ids.size >= self._bf16_min_tokens:
            return "bfloat16"
        return str(next(self._model.parameters()).dtype).removeprefix("torch.")

    def in_bfloat16(self) -> TorchEngine:
        """A copy with its weights in bfloat16, for when every batch it gets runs in bfloat16
        (a `SplitEngine` sends the float32 ones to ONNX Runtime): autocast casts weights and
        activations at every call, and the copy ran a search's 20 reranked pairs 6-24%
        faster, as close to float32's scores (largest logit difference 0.012 vs autocast's
        0.021)."""
        model = copy.deepcopy(self._model).to(torch.bfloat16)
        return TorchEngine(model, self._output, str(self._device), "bfloat16")

    def __call__(self, batch: Padded) -> FloatArray:
        return split_on_oom(self._forward, batch)

    def _forward(self, batch: Padded) -> FloatArray:
        features: dict[str, Any] = {
            "input_ids": torch.from_numpy(batch.input_ids).to(self._device),
            "attention_mask": torch.from_numpy(batch.attention_mask).to(self._device),
            "token_type_ids": torch.from_numpy(batch.token_type_ids).to(self._device),
            "modality": "text",
        }
        with torch.inference_mode(), self._precision(batch):
            out = self._model.forward(features)[self._output]
        array: FloatArray = out.float().cpu().numpy()
        return array[:, 0] if self._output == "scores" else array

    def _precision(self, batch: Padded) -> contextlib.AbstractContextManager[object]:
        if self._autocast and batch.input_ids.size >= self._bf16_min_tokens:
            return torch.autocast(self._device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


class SplitEngine:
    """Batches under `below` padded tokens on a second engine once one is attached; the rest,
    and every batch until then, on `large`.

    On a CPU the float32 batches go to ONNX Runtime's fused graph (`app.models.onnx`) and the
    bfloat16 ones stay on torch: a lone query took 7.7-8.7 ms there against 19-46 ms in torch
    eager, whose per-layer Python and thread hand-offs are most of a small batch's cost, while
    large batches run fastest in torch's bfloat16 (bench/README.md, `bench.precision`). The
    second engine is attached from another thread when its export is ready: a plain attribute,
    read once per batch."""

    def __init__(self, large: Engine, below: int) -> None:
        self.large = large
        self.below = below
        self.small: Engine | None = None

    def __call__(self, batch: Padded) -> FloatArray:
        small = self.small
        if small is not None and batch.input_ids.size < self.below:
            return small(batch)
        return self.large(batch)


def split_on_oom(run: Callable[[Padded], FloatArray], batch: Padded) -> FloatArray:
    """Run `batch`; on a CUDA out-of-memory, run it in halves (recursively) instead."""
    try:
        return run(batch)
    except torch.cuda.OutOfMemoryError:
        if len(batch.input_ids) == 1:
            raise
        torch.cuda.empty_cache()
        return np.concatenate([split_on_oom(run, half) for half in _halves(batch)])


def _halves(batch: Padded) -> Iterator[Padded]:
    mid = len(batch.input_ids) // 2
    for part in (slice(0, mid), slice(mid, None)):
        yield Padded(batch.input_ids[part], batch.attention_mask[part], batch.token_type_ids[part])
