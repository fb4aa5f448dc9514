"""Where bfloat16 starts to pay on this CPU: float32 vs bf16 autocast per batch shape.

    python -m bench.precision [--model sentence-transformers/all-MiniLM-L6-v2]

The embedder's forward pass (our `TorchEngine`, the same code the services run) on padded
batches of items x tokens, each timed in both precisions. The last line names the smallest
batch (in padded tokens) from which bfloat16 is faster: the value for
`SEMSEARCH_*_BF16_MIN_BATCH_TOKENS` on this machine. On a CPU without bf16 units (no
AVX512-BF16 or AMX) bf16 is emulated and never wins; `dtype=auto` keeps float32 there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from app.models.engines import TorchEngine, cpu_has_bf16
from app.models.paths import resolve_model_path
from app.models.tokens import Padded
from bench.common import machine, table, write_json

SHAPES = [(1, 16), (1, 32), (4, 32), (16, 32), (1, 128), (4, 128), (8, 256), (32, 256)]


def timed_ms(engine: TorchEngine, batch: Padded, repeats: int) -> float:
    engine(batch)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine(batch)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model_path(args.model), device="cpu")
    fp32 = TorchEngine(model, "sentence_embedding", "cpu", "float32")
    bf16 = TorchEngine(model, "sentence_embedding", "cpu", "bfloat16")
    rows: list[dict[str, Any]] = []
    for items, tokens in SHAPES:
        ids = np.full((items, tokens), 1000, dtype=np.int64)
        batch = Padded(ids, np.ones_like(ids), np.zeros_like(ids))
        a, b = timed_ms(fp32, batch, args.repeats), timed_ms(bf16, batch, args.repeats)
        rows.append(
            {
                "items": items,
                "tokens": tokens,
                "padded_tokens": items * tokens,
                "float32_ms": a,
                "bfloat16_ms": b,
                "bf16_speedup": a / b,
            }
        )
        print(f"  {items:>3} x {tokens:<4} fp32 {a:8.2f} ms  bf16 {b:8.2f} ms", flush=True)
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
    columns = ["items", "tokens", "padded_tokens", "float32_ms", "bfloat16_ms", "bf16_speedup"]
    print(table(rows, columns))
    print()
    print(f"cpu bf16 units: {cpu_has_bf16()}; bf16 faster at {wins or 'no shape'}")
    print(
        "bf16 from (padded tokens):",
        threshold if threshold is not None else "never: keep float32 (dtype=auto does)",
    )
    path = write_json("precision", {"machine": machine(), "rows": rows, "threshold": threshold})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
