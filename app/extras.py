"""Optional dependencies: imported through `require`, so a missing one names the extra to install.

    models   torch, sentence-transformers, transformers, the bundled MiniLM weights
    onnx     onnx, onnxruntime                         (SEMSEARCH_*_BACKEND=onnx | onnx-int8,
                                                        SEMSEARCH_*_FLOAT32_ON_ONNX)
    qdrant   qdrant-client                             (SEMSEARCH_INDEX_BACKEND=qdrant)
    eval     ir-measures, pytrec-eval                  (`semsearch eval`)
    gpu      faiss-gpu-cu12                            (SEMSEARCH_FAISS_GPU)
    otel     opentelemetry-sdk, the OTLP/HTTP exporter (OTEL_EXPORTER_OTLP_ENDPOINT)

The extras are defined in pyproject.toml; a test checks that every extra named here exists there.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Literal

from app.errors import SemsearchError

Extra = Literal["models", "onnx", "qdrant", "eval", "gpu", "otel"]
# What `installed` looks for: the extras that features check for before asking for them.
MODULES: dict[Extra, tuple[str, ...]] = {"onnx": ("onnx", "onnxruntime")}


class MissingExtra(SemsearchError):
    """A feature was asked for whose optional dependency is not installed."""

    type = "missing_extra"

    def __init__(self, extra: Extra, feature: str, missing: str, hint: str = "") -> None:
        super().__init__(
            f"{feature} needs the `{extra}` extra ({missing} is missing): "
            f"pip install 'semsearch[{extra}]'" + (f"; {hint}" if hint else "")
        )
        self.extra = extra


def require(module: str, extra: Extra, feature: str, hint: str = "") -> ModuleType:
    """`import module`, or MissingExtra naming `extra` when it (or what it needs) is missing.

    >>> require("json", "eval", "the JSON report").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(extra, feature, exc.name or module, hint) from exc


def installed(extra: Extra) -> bool:
    """Whether `extra`'s modules can be imported, without importing them: for features that
    turn themselves on when their extra is there."""
    return all(importlib.util.find_spec(name) is not None for name in MODULES[extra])
