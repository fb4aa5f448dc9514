"""How a model's batch queue is bounded and how many batches it computes at once: its
settings resolved for the device it runs on."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import ModelSettings
from app.models.cpu import cpu_has_bf16


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int
    max_batch_tokens: int
    max_wait_s: float
    max_queued_items: int

    @classmethod
    def from_settings(cls, settings: ModelSettings, device: str) -> BatchLimits:
        return cls(
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=resolve_batch_tokens(settings.max_batch_tokens, device),
            max_wait_s=settings.max_wait_ms / 1000,
            max_queued_items=settings.max_queue_items,
        )


def resolve_workers(setting: int, device: str, backend: str, threads: int) -> int:
    """0 picks: two for torch (`sentence-transformers`) on a CPU with at least two threads,
    where they were measured; one on a GPU (one stream of batches keeps it busy) and for ONNX
    Runtime, whose sessions keep their own thread pools (two side by side would run twice
    the threads there are)."""
    if setting:
        return setting
    torch_cpu = not device.startswith("cuda") and backend == "sentence-transformers"
    return 2 if torch_cpu and threads >= 2 else 1


def resolve_batch_tokens(setting: int, device: str) -> int:
    """0 picks by device. A GPU wants big batches: 16,384. A CPU with bf16 units runs large
    batches in bfloat16, whose cost per item keeps falling with the batch (20.5 ms at 8 x 256
    tokens, 18.3 ms at 32 x 256): 8,192 keeps a search's 20-30 reranked pairs of 256 tokens
    in one batch, which answered lone reranked searches 24% faster than 16 + 4 pairs did (2.1
    vs 1.7 searches/s; the same at 4 clients, whose batches were full either way). Other CPUs
    run long inputs in float32, faster in small batches (activations stay in cache): measured
    at 512 tokens, 11.3 pairs/s in batches of 4-8 vs 9.3-9.9 in batches of 32; at 256
    tokens, 5-10% faster at 8-16 than at 64: 4,096."""
    if setting:
        return setting
    if device.startswith("cuda"):
        return 16_384
    return 8_192 if cpu_has_bf16() else 4_096
