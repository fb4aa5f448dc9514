"""What the CPU offers the models: the cores the process may use, and bf16 units. No torch
here: the batch limits read it too."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path


@cache
def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX), read from /proc/cpuinfo (Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cpu_threads(setting: int) -> int:
    """`setting`, or for 0 every core the process may run on (torch's and ONNX Runtime's
    defaults ignore CPU affinity, e.g. a container's CPU set)."""
    return setting or max(1, len(os.sched_getaffinity(0)))
