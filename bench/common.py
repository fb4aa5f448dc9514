"""Helpers shared by the benchmarks: result files, tables, machine facts."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub-markdown table (readable on a terminal too)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def load_store(path: str) -> tuple[list[tuple[str, str, str]], np.ndarray]:
    """(id, title, text) per document and their unit vectors, in one order."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT id, title, text, vector FROM docs ORDER BY seq").fetchall()
    docs = [(r[0], r[1], r[2]) for r in rows]
    vectors = np.stack([np.frombuffer(r[3], dtype=np.float32) for r in rows])
    return docs, vectors
