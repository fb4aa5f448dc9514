"""ONNX Runtime backend: export a model once (this needs torch), then run it with onnxruntime.

The export uses eager attention so ONNX Runtime's transformer optimizer can fuse attention,
layer norms and GELU; that fused fp32 graph is what `onnx` runs. `onnx-int8` additionally
quantizes the weights to int8 (dynamic quantization): about twice as fast on CPU, with a
measurable quality cost (see bench/README.md before choosing it).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.extras import require
from app.logs import get_logger
from app.models.cpu import cpu_threads
from app.models.tokens import Padded
from app.types import FloatArray

if TYPE_CHECKING:
    from app.config import ModelSettings

log = get_logger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
RECIPE = "2"  # bump when the export changes, so cached exports are rebuilt
EXPORTING = "exporting a model to ONNX"
_STOP_WAIT_S = 10.0  # for an export child to stop when asked, before it is killed


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
    fused fp32 graph (model.onnx) and its int8 quantization (model.int8.onnx) side by side.
    Processes exporting the same model take turns: the later ones find it done."""
    with _exclusive(target.parent):
        if not target.is_file():
            _export(folder, kind, target)


@contextlib.contextmanager
def _exclusive(export_dir: Path) -> Iterator[None]:
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(export_dir.with_name(export_dir.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


async def export_in_child(folder: Path, kind: str, target: Path, niceness: int) -> None:
    """`export` in a child process `niceness` steps nicer than this one: the export keeps the
    GIL for seconds at a time (the graph optimizer is Python), which a process that is serving
    cannot spare. The child is stopped when the caller is cancelled: asked first (it removes
    its half-written files), killed if a long call inside torch keeps it from answering.

    Raises:
        RuntimeError: the export failed (its reasons are in the child's log lines)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.models.onnx", str(folder), kind, str(target), str(niceness)
    )
    try:
        code = await child.wait()
    except BaseException:
        if child.returncode is None:
            child.terminate()
            try:
                await asyncio.wait_for(asyncio.shield(child.wait()), _STOP_WAIT_S)
            except TimeoutError:
                child.kill()
                await child.wait()
        raise
    if code != 0:
        raise RuntimeError(f"the ONNX export of {folder} exited with {code}")


async def load_float32(
    folder: Path, kind: str, output: str, settings: ModelSettings, executor: Executor
) -> OnnxEngine:
    """The fused float32 graph of `folder`: exported in a child process unless this machine
    has it already, then loaded and warmed up on `executor` (a model's thread, whose niceness
    ONNX Runtime's threads inherit)."""
    path = exported_path(folder, kind, False, settings.onnx_cache_dir)
    if not await asyncio.to_thread(path.is_file):
        await export_in_child(folder, kind, path, settings.compute_niceness)

    def load() -> OnnxEngine:
        engine = OnnxEngine(path, "cpu", output, cpu_threads(settings.threads))
        ids = np.ones((1, 4), np.int64)
        engine(Padded(ids, ids, np.zeros_like(ids)))
        return engine

    return await asyncio.get_running_loop().run_in_executor(executor, load)


def _export(folder: Path, kind: str, target: Path) -> None:
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer

    for module in ("onnx", "onnxruntime.transformers.optimizer", "onnxruntime.quantization"):
        require(module, "onnx", EXPORTING)

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
    try:
        _write(Graph(), folder, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target.parent, ignore_errors=True)
    os.rename(staging, target.parent)  # readers see a complete export or none
    log.info("onnx_exported", model=str(folder), kind=kind, path=str(target.parent))


def _write(graph: Any, folder: Path, staging: Path) -> None:
    """The fused fp32 graph and the int8 one into `staging`."""
    import torch

    optimizer = require("onnxruntime.transformers.optimizer", "onnx", EXPORTING)
    quantization = require("onnxruntime.quantization", "onnx", EXPORTING)
    sample = torch.ones((2, 16), dtype=torch.long)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    raw = staging / "raw.onnx"
    torch.onnx.export(
        graph,
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


def _main(folder: str, kind: str, target: str, niceness: str) -> None:
    """`python -m app.models.onnx FOLDER KIND TARGET NICENESS`: what `export_in_child` runs."""
    from app.config.common import ServiceSettings
    from app.logs import configure_logging

    settings = ServiceSettings()  # the parent's SEMSEARCH_LOG_* settings, from the environment
    configure_logging(settings.log_level, settings.log_format, f"onnx-export-{kind}")
    # The exporter, optimizer and quantizer narrate every node and give advice (torch warns
    # about tracing): only their errors reach the serving process's log, with our own lines.
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger(__name__).setLevel(settings.log_level.upper())
    warnings.filterwarnings("ignore")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # transformers' weight-loading bar
    os.nice(int(niceness))
    # terminate() from the parent: unwind, so the staging folder is removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    export(Path(folder), kind, Path(target))


if __name__ == "__main__":
    _main(*sys.argv[1:])
