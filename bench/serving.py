"""Model serving benchmark: semsearch's services vs the naive service vs the raw model call.

    python -m bench.serving                 # everything, ~20 minutes on 2 CPU cores
    python -m bench.serving --workloads queries --duration 5

Workloads (as in NVIDIA's NIM benchmark): single ~20-token queries per request at concurrency
1/3/5/10/15; 64 passages of ~300 tokens per request at 1/3/5; one query with 10/20/40
passages of ~512 tokens to rerank, at 1/3. All services run from the start and take turns:
each cell (a workload at one concurrency) is measured on every target in turn, for
`--rounds` rounds with the order flipped each round, so that a change in the shared host's
speed falls on all alike; a cell's numbers pool its rounds. The raw
in-process call (same model, same batch, no HTTP) is measured in the same run: it is the
ceiling for passages and reranking. The cross-encoder is MiniLM-L6-sized with a random head
(speed does not depend on the weights), built from the bundled all-MiniLM-L6-v2 encoder.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from app.models.paths import resolve_model_path
from app.models.tokens import TextTokenizer
from bench.common import machine, table, write_json
from harness.loadgen import LoadResult, run_load
from harness.processes import ROOT, Service, child_env, free_port, start_service

EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
RERANK_MAX_LENGTH = 512
CONCURRENCY = {"queries": (1, 3, 5, 10, 15), "passages": (1, 3, 5), "rerank": (1, 3)}
RERANK_SIZES = (10, 20, 40)


# -- workload texts, cut from the sample corpus to a token length ---------------------------


def texts_of(tokens: int, count: int) -> list[str]:
    """`count` distinct texts of about `tokens` tokens, from data/corpus.jsonl."""
    import json

    tokenizer = TextTokenizer.from_folder(resolve_model_path(EMBEDDER), 100_000)._tok
    docs = [json.loads(line) for line in (ROOT / "data" / "corpus.jsonl").read_text().splitlines()]
    stream = " ".join(f"{d['title']}. {d['text']}" for d in docs)
    encoding = tokenizer.encode(stream, add_special_tokens=False)
    offsets = encoding.offsets
    out = []
    step = max(tokens, 1)
    for i in range(count):
        start = (i * step * 3) % max(len(offsets) - tokens - 1, 1)
        out.append(stream[offsets[start][0] : offsets[start + tokens - 3][1]])
    return out


def workloads(names: list[str]) -> list[dict[str, Any]]:
    plans: list[dict[str, Any]] = []
    bodies: list[dict[str, Any]]
    if "queries" in names:
        bodies = [{"input": [q], "input_type": "query"} for q in texts_of(20, 300)]
        plans.append(
            {
                "name": "queries",
                "path": "/v1/embeddings",
                "bodies": bodies,
                "items": 1,
                "levels": CONCURRENCY["queries"],
                "kind": "embedder",
            }
        )
    if "passages" in names:
        passages = texts_of(300, 64 * 6)
        bodies = [
            {"input": passages[i : i + 64], "input_type": "passage", "truncate": "END"}
            for i in range(0, len(passages), 64)
        ]
        plans.append(
            {
                "name": "passages",
                "path": "/v1/embeddings",
                "bodies": bodies,
                "items": 64,
                "levels": CONCURRENCY["passages"],
                "kind": "embedder",
            }
        )
    if "rerank" in names:
        queries = texts_of(20, 8)
        passages = texts_of(512, 40)
        for size in RERANK_SIZES:
            bodies = [
                {
                    "query": {"text": q},
                    "passages": [{"text": p} for p in passages[:size]],
                    "truncate": "END",
                }
                for q in queries
            ]
            plans.append(
                {
                    "name": f"rerank-{size}",
                    "path": "/v1/ranking",
                    "bodies": bodies,
                    "items": size,
                    "levels": CONCURRENCY["rerank"],
                    "kind": "reranker",
                }
            )
    return plans


# -- targets -------------------------------------------------------------------------------


def random_head_cross_encoder(folder: Path) -> Path:
    """MiniLM-L6 cross-encoder: the bundled encoder weights plus a random 1-logit head."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    source = resolve_model_path(EMBEDDER)
    BertForSequenceClassification.from_pretrained(source, num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def start_target(target: str, kind: str, cross_encoder: Path, logs: Path, dtype: str) -> Service:
    port = free_port()
    if target == "naive":
        env = child_env(
            BENCH_EMBEDDER=resolve_model_path(EMBEDDER),
            BENCH_RERANKER=str(cross_encoder),
            BENCH_RERANKER_MAX_LENGTH=str(RERANK_MAX_LENGTH),
        )
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.naive_service:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        return start_service("naive", command, port, env, logs, ready_path="/docs")
    env = child_env(
        SEMSEARCH_LOG_LEVEL="warning",
        SEMSEARCH_EMBEDDER_MODEL=EMBEDDER,
        SEMSEARCH_RERANKER_MODEL=str(cross_encoder),
        SEMSEARCH_RERANKER_MAX_LENGTH=str(RERANK_MAX_LENGTH),
        SEMSEARCH_EMBEDDER_DTYPE=dtype,
        SEMSEARCH_RERANKER_DTYPE=dtype,
    )
    command = [sys.executable, "-m", "app.cli", "serve", kind, "--port", str(port)]
    service = start_service(f"semsearch-{kind}", command, port, env, logs)
    # the first start on a machine exports the model for ONNX Runtime (~15 s of CPU) while
    # torch serves: measured once that is done
    for _ in range(1500):
        if "pending" not in httpx.get(f"{service.url}/ready").json()["components"]["backend"]:
            break
        time.sleep(0.2)
    return service


def measure(
    service: Service, target: str, plan: dict[str, Any], level: int, duration: float, least: int
) -> LoadResult:
    result: LoadResult = asyncio.run(
        run_load(
            service.url + plan["path"],
            plan["bodies"],
            concurrency=level,
            duration_s=duration,
            min_requests=max(least, 2 * level),
            items_per_request=plan["items"],
        )
    )
    print(
        f"  {target:<10} {plan['name']:<10} c={level:<3} {result.rps:8.1f} req/s "
        f"{result.items_per_s:9.1f} items/s  p50 {result.percentile(50):8.1f} ms  "
        f"p99 {result.percentile(99):8.1f} ms  errors {result.errors}",
        flush=True,
    )
    return result


# -- the raw in-process ceiling --------------------------------------------------------------


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def raw_baselines(
    plans: list[dict[str, Any]], cross_encoder: Path, dtype: str
) -> dict[str, dict[str, float]]:
    """The model called directly, at the precision our service runs (so the ratio is ours)."""
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer

    precision: Any = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if dtype == "bfloat16"
        else torch.inference_mode()
    )
    out: dict[str, dict[str, float]] = {}
    model = SentenceTransformer(resolve_model_path(EMBEDDER), device="cpu")
    ce = CrossEncoder(str(cross_encoder), device="cpu", max_length=RERANK_MAX_LENGTH)
    for plan in plans:
        with torch.inference_mode(), precision:
            out[plan["name"]] = _raw_rate(plan, model, ce)
        print(f"  raw {plan['name']:<10} {out[plan['name']]}", flush=True)
    return out


def _raw_rate(plan: dict[str, Any], model: Any, ce: Any) -> dict[str, float]:
    bodies = plan["bodies"]
    if plan["name"] == "queries":
        texts = [b["input"][0] for b in bodies]
        one = timed(partial(model.encode, texts[:1]), 200)
        fifteen = timed(partial(model.encode, texts[:15], batch_size=15), 50)
        return {"calls_per_s": 1 / one, "items_per_s_batch15": 15 / fifteen}
    if plan["name"] == "passages":
        batch = bodies[0]["input"]
        return {"items_per_s": 64 / timed(partial(model.encode, batch, batch_size=64), 3)}
    body = bodies[0]
    pairs = [(body["query"]["text"], p["text"]) for p in body["passages"]]
    return {"items_per_s": len(pairs) / timed(partial(ce.predict, pairs, batch_size=len(pairs)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="queries,passages,rerank")
    parser.add_argument("--targets", default="naive,semsearch")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=2, help="turns each target takes per cell")
    parser.add_argument(
        "--min-requests", type=int, default=6, help="per cell and round, for percentiles"
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="our services' precision; the raw ceiling uses the same",
    )
    args = parser.parse_args()

    plans = workloads(args.workloads.split(","))
    work = Path(tempfile.mkdtemp(prefix="semsearch-bench-"))
    cross_encoder = random_head_cross_encoder(ROOT / "bench" / ".models" / "ce-minilm-l6-random")
    # one naive process serves both models; ours are two services
    services: dict[tuple[str, str], Service] = {}
    results: dict[tuple[str, str, int], list[LoadResult]] = {}
    targets = args.targets.split(",")
    try:
        for target in targets:
            for kind in ("both",) if target == "naive" else ("embedder", "reranker"):
                if any(kind in ("both", p["kind"]) for p in plans):
                    service = start_target(target, kind, cross_encoder, work, args.dtype)
                    services[target, kind] = service
                    print(f"{target} ({kind}) at {service.url}", flush=True)
        for round_ in range(args.rounds):
            order = targets if round_ % 2 == 0 else targets[::-1]
            for plan in plans:
                for level in plan["levels"]:
                    for target in order:
                        kind = "both" if target == "naive" else plan["kind"]
                        result = measure(
                            services[target, kind],
                            target,
                            plan,
                            level,
                            args.duration,
                            args.min_requests,
                        )
                        results.setdefault((target, plan["name"], level), []).append(result)
    finally:
        for service in services.values():
            service.stop()
    cells = [
        {"target": target, "workload": workload, **LoadResult.pooled(runs).summary()}
        for (target, workload, _), runs in sorted(
            results.items(), key=lambda item: targets.index(item[0][0])
        )
    ]
    print("raw in-process model calls", flush=True)
    raw = raw_baselines(plans, cross_encoder, args.dtype)
    verdicts = judge(cells, raw)

    print()
    print(
        table(
            cells,
            [
                "target",
                "workload",
                "concurrency",
                "requests",
                "errors",
                "rps",
                "items_per_s",
                "p50_ms",
                "p90_ms",
                "p95_ms",
                "p99_ms",
            ],
        )
    )
    print()
    print(table(verdicts, ["check", "value", "target", "met"]))
    path = write_json(
        f"serving-{args.dtype}",
        {
            "machine": machine(),
            "cells": cells,
            "raw": raw,
            "verdicts": verdicts,
            "args": vars(args),
        },
    )
    print(f"\nwrote {path}")


def judge(cells: list[dict[str, Any]], raw: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """The issue's targets, computed from this run's numbers."""

    def cell(target: str, workload: str, concurrency: int) -> dict[str, Any] | None:
        return next(
            (
                c
                for c in cells
                if (c["target"], c["workload"], c["concurrency"]) == (target, workload, concurrency)
            ),
            None,
        )

    verdicts = []
    ours, naive = cell("semsearch", "queries", 15), cell("naive", "queries", 15)
    if ours and naive:
        ratio = ours["rps"] / naive["rps"]
        verdicts.append(
            {
                "check": "queries c=15: rps vs naive",
                "value": f"{ratio:.2f}x",
                "target": ">= 3x",
                "met": ratio >= 3,
            }
        )
        verdicts.append(
            {
                "check": "queries c=15: p99 vs naive p99",
                "value": f"{ours['p99_ms']:.1f} vs {naive['p99_ms']:.1f} ms",
                "target": "<=",
                "met": ours["p99_ms"] <= naive["p99_ms"],
            }
        )
    ours, naive = cell("semsearch", "queries", 1), cell("naive", "queries", 1)
    if ours and naive:
        verdicts.append(
            {
                "check": "queries c=1: p50 vs naive p50",
                "value": f"{ours['p50_ms']:.1f} vs {naive['p50_ms']:.1f} ms",
                "target": "<=",
                "met": ours["p50_ms"] <= naive["p50_ms"],
            }
        )
    for workload in ["passages", *(f"rerank-{n}" for n in RERANK_SIZES)]:
        ceiling = raw.get(workload, {}).get("items_per_s")
        for c in cells:
            if c["target"] == "semsearch" and c["workload"] == workload and ceiling:
                ratio = c["items_per_s"] / ceiling
                verdicts.append(
                    {
                        "check": f"{workload} c={c['concurrency']}: items/s vs raw",
                        "value": f"{ratio:.2f}x",
                        "target": ">= 0.9x",
                        "met": ratio >= 0.9,
                    }
                )
    return verdicts


if __name__ == "__main__":
    main()
