"""The CPU precision rule: with dtype `auto` on a CPU with bf16 units, small batches (a lone
query) run in float32 and large ones in bfloat16; an explicit dtype applies to every batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.models.engines import TorchEngine, bf16_min_tokens
from app.models.tokens import Padded


def padded(items: int, tokens: int) -> Padded:
    ids = np.ones((items, tokens), dtype=np.int64)
    return Padded(ids, np.ones_like(ids), np.zeros_like(ids))


@pytest.mark.parametrize(
    ("setting", "dtype", "device", "threshold"),
    [
        ("auto", "bfloat16", "cpu", 512),  # a bf16 CPU: mixed by batch size
        ("auto", "float32", "cpu", 0),  # no bf16 units: float32 throughout
        ("bfloat16", "bfloat16", "cpu", 0),  # asked for: every batch
        ("auto", "float16", "cuda", 0),  # GPUs: half precision throughout
    ],
)
def test_only_auto_on_a_bf16_cpu_mixes_precisions(
    setting: str, dtype: str, device: str, threshold: int
) -> None:
    assert bf16_min_tokens(setting, dtype, device, 512) == threshold


class Echo(torch.nn.Module):
    """Reports the dtype its matmul ran in, as a sentence-transformers model's output."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = features["input_ids"][:, :1].to(self.linear.weight.dtype)  # as an embedding is
        out = self.linear(x)
        marker = 1.0 if out.dtype == torch.bfloat16 else 0.0
        return {"sentence_embedding": torch.full((len(x), 1), marker)}


def test_small_batches_run_in_float32_and_large_ones_in_bfloat16() -> None:
    engine = TorchEngine(Echo(), "sentence_embedding", "cpu", "bfloat16", bf16_min_tokens=512)
    lone_query = padded(1, 20)
    bulk = padded(32, 256)
    assert engine.precision(lone_query) == "float32"
    assert engine(lone_query)[0, 0] == 0.0  # really ran in float32
    assert engine.precision(bulk) == "bfloat16"
    assert engine(bulk)[0, 0] == 1.0


def test_an_explicit_dtype_applies_to_every_batch() -> None:
    engine = TorchEngine(Echo(), "sentence_embedding", "cpu", "bfloat16", bf16_min_tokens=0)
    assert engine.precision(padded(1, 20)) == "bfloat16"
    assert engine(padded(1, 20))[0, 0] == 1.0
    engine = TorchEngine(Echo(), "sentence_embedding", "cpu", "float32")
    assert engine.precision(padded(32, 256)) == "float32"


def test_a_copy_in_bfloat16_runs_every_batch_in_it_and_leaves_the_original() -> None:
    engine = TorchEngine(Echo(), "sentence_embedding", "cpu", "bfloat16", bf16_min_tokens=512)
    copy = engine.in_bfloat16()
    lone_query = padded(1, 20)
    assert copy.precision(lone_query) == "bfloat16"
    assert copy(lone_query)[0, 0] == 1.0  # the weights themselves, no autocast needed
    assert copy(lone_query).dtype == np.float32  # answers stay float32 arrays
    assert engine.precision(lone_query) == "float32"  # the original keeps float32 weights
    assert engine(lone_query)[0, 0] == 0.0
