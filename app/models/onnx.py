"""ONNX Runtime backend: export a model once (this needs torch), then run it with onnxruntime.

The export uses eager attention so ONNX Runtime's transformer optimizer can fuse attention,
layer norms and GELU; that fused fp32 graph is what `onnx` runs. `onnx-int8` additionally
quantizes the weights to int8 (dynamic quantization): about twice as fast on CPU, with a
measurable quality cost (see bench/README.md before choosing it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from app.extras import require
from app.logs import get_logger
from app.models.tokens import Padded
from app.types import FloatArray

log = get_logger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
RECIPE = "2"  # bump when the export changes, so cached exports are rebuilt


def exported_path(folder: Path, kind: str, quantized: bool, cache_dir: Path) -> Path:
    """Where the export of `folder` lives; keyed by the weights and the export recipe, so new
    weights or a changed export are exported again."""
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    fingerprint = "|".join(
        [
            f"recipe={RECIPE}",
            str(folder.resolve()),
            kind,
            *(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in weights),
        ]
    )
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    return cache_dir / key / ("model.int8.onnx" if quantized else "model.onnx")


def export(folder: Path, kind: str, target: Path) -> None:
    """Export `folder` (an embedding model or a cross-encoder) to `target`, with both the
    fused fp32 graph (model.onnx) and its int8 quantization (model.int8.onnx) side by side."""
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer

    feature = "exporting a model to ONNX"
    require("onnx", "onnx", feature)
    quantization = require("onnxruntime.quantization", "onnx", feature)
    optimizer = require("onnxruntime.transformers.optimizer", "onnx", feature)

    eager = {"attn_implementation": "eager"}
    model: torch.nn.Module
    if kind == "embedding":
        model, output = (
            SentenceTransformer(str(folder), device="cpu", model_kwargs=eager),
            "sentence_embedding",
        )
    else:
        model, output = CrossEncoder(str(folder), device="cpu", model_kwargs=eager), "scores"
    model.eval()

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            features = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "token_type_ids": token_type_ids,
                "modality": "text",
            }
            return self.inner.forward(features)[output]

    staging = target.parent.with_name(target.parent.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    sample = torch.ones((2, 16), dtype=torch.long)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    raw = staging / "raw.onnx"
    torch.onnx.export(
        Graph(),
        (sample, sample, torch.zeros_like(sample)),
        str(raw),
        input_names=list(INPUTS),
        output_names=["output"],
        dynamic_axes={**axes, "output": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    # the optimizer's own guess of the attention shape fails on these graphs; without it,
    # attention is not fused (and most of the speed-up is lost)
    config = (
        json.loads((folder / "config.json").read_text())
        if (folder / "config.json").is_file()
        else {}
    )
    fused = optimizer.optimize_model(
        str(raw),
        model_type="bert",
        num_heads=int(config.get("num_attention_heads", 0)),
        hidden_size=int(config.get("hidden_size", 0)),
    )
    log.info(
        "onnx_fused_operators",
        **{k: v for k, v in fused.get_fused_operator_statistics().items() if v},
    )
    fused.save_model_to_file(str(staging / "model.onnx"))
    # Quantize the unfused graph: the quantizer cannot type the fused operators.
    quantization.quantize_dynamic(
        str(raw), str(staging / "model.int8.onnx"), weight_type=quantization.QuantType.QInt8
    )
    raw.unlink()
    shutil.rmtree(target.parent, ignore_errors=True)
    os.rename(staging, target.parent)  # readers see a complete export or none
    log.info("onnx_exported", model=str(folder), kind=kind, path=str(target.parent))


class OnnxEngine:
    """Runs an exported graph; feeds only the inputs the graph declares."""

    def __init__(self, path: Path, device: str, output: str, threads: int) -> None:
        ort = require("onnxruntime", "onnx", "the ONNX Runtime backend")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self._session = ort.InferenceSession(str(path), options, providers=providers)
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._output = output

    def __call__(self, batch: Padded) -> FloatArray:
        feed = {name: getattr(batch, name) for name in self._inputs}
        out = np.asarray(self._session.run(None, feed)[0], dtype=np.float32)
        return out[:, 0] if self._output == "scores" else out
