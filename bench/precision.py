"""Which engine and precision runs each batch shape fastest on this CPU.

    python -m bench.precision [--model sentence-transformers/all-MiniLM-L6-v2]

The embedder's forward pass through the engines the services run, on padded batches of items
x tokens: torch in float32 (`TorchEngine`), torch under bfloat16 autocast, and ONNX Runtime's
fused float32 graph (`OnnxEngine`, exported on first use; skipped without the `onnx` extra).
The engines take turns on every repeat, so a change of the host's speed hits them alike.

The last line names the smallest batch (in padded tokens) from which bfloat16 beats the
float32 engine the service would use (ONNX Runtime with `float32_on_onnx`, else torch): the
value for `SEMSEARCH_*_BF16_MIN_BATCH_TOKENS` on this machine. On a CPU without bf16 units (no
AVX512-BF16 or AMX) bf16 is emulated and never wins; `dtype=auto` keeps float32 there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.config import EmbedderSettings
from app.extras import installed
from app.models.cpu import cpu_has_bf16, cpu_threads
from app.models.engines import Engine, TorchEngine
from app.models.paths import resolve_model_path
from app.models.tokens import Padded
from bench.common import machine, table, write_json

SHAPES = [
    (1, 16),
    (1, 32),
    (2, 32),
    (4, 32),
    (8, 32),
    (16, 32),
    (1, 128),
    (4, 128),
    (8, 256),
    (32, 256),
]


def timed_ms(engines: dict[str, Engine], batch: Padded, repeats: int) -> dict[str, float]:
    """p50 per engine; the engines take turns on every repeat."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    for engine in engines.values():
        engine(batch)  # warm-up
    for _ in range(repeats):
        for name, engine in engines.items():
            started = time.perf_counter()
            engine(batch)
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def onnx_engine(model: str) -> Engine | None:
    if not installed("onnx"):
        return None
    from app.models.onnx import OnnxEngine, export, exported_path

    folder = Path(resolve_model_path(model))
    path = exported_path(folder, "embedding", False, EmbedderSettings().onnx_cache_dir)
    export(folder, "embedding", path)  # once per machine: a cached export is reused
    return OnnxEngine(path, "cpu", "sentence_embedding", cpu_threads(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model_path(args.model), device="cpu")
    engines: dict[str, Engine] = {
        "float32": TorchEngine(model, "sentence_embedding", "cpu", "float32"),
        "bfloat16": TorchEngine(model, "sentence_embedding", "cpu", "bfloat16"),
    }
    onnx = onnx_engine(args.model)
    if onnx is not None:
        engines["onnx_float32"] = onnx
    float32 = "onnx_float32" if onnx is not None else "float32"
    rows: list[dict[str, Any]] = []
    for items, tokens in SHAPES:
        ids = np.full((items, tokens), 1000, dtype=np.int64)
        batch = Padded(ids, np.ones_like(ids), np.zeros_like(ids))
        ms = timed_ms(engines, batch, args.repeats)
        rows.append(
            {
                "items": items,
                "tokens": tokens,
                "padded_tokens": items * tokens,
                **{f"{name}_ms": value for name, value in ms.items()},
                "bf16_speedup": ms[float32] / ms["bfloat16"],
            }
        )
        print(
            f"  {items:>3} x {tokens:<4} "
            + "  ".join(f"{name} {value:8.2f} ms" for name, value in ms.items()),
            flush=True,
        )
    wins = sorted(r["padded_tokens"] for r in rows if r["bf16_speedup"] > 1.0)
    # the threshold: the smallest batch size from which bf16 wins at every measured size
    threshold = next(
        (
            size
            for size in wins
            if all(r["bf16_speedup"] > 1.0 for r in rows if r["padded_tokens"] >= size)
        ),
        None,
    )
    print()
    columns = ["items", "tokens", "padded_tokens", *(f"{n}_ms" for n in engines), "bf16_speedup"]
    print(table(rows, columns))
    print()
    print(f"cpu bf16 units: {cpu_has_bf16()}; bf16 faster than {float32} at {wins or 'no shape'}")
    print(
        "bf16 from (padded tokens):",
        threshold if threshold is not None else "never: keep float32 (dtype=auto does)",
    )
    path = write_json(
        "precision",
        {"machine": machine(), "float32_engine": float32, "rows": rows, "threshold": threshold},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
