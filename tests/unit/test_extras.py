"""Optional dependencies: every extra the code names exists, and a missing one is named."""

from __future__ import annotations

import sys
import tomllib
import typing
from pathlib import Path

import pytest

from app.evaluation.beir import evaluate
from app.extras import Extra, MissingExtra
from app.index.qdrant.index import QdrantIndex
from tests.conftest import ROOT, qdrant_options


def defined_extras() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["optional-dependencies"])


def test_every_extra_the_code_and_docs_name_is_defined() -> None:
    defined = defined_extras()
    assert set(typing.get_args(Extra)) <= defined
    for path in [ROOT / "README.md", *ROOT.glob("app/**/*.py")]:
        for named in _backticked_extras(path.read_text()):
            assert named in defined, f"{path.name} names the `{named}` extra"


def _backticked_extras(text: str) -> set[str]:
    """`name` extra, as the docs and error messages write it."""
    import re

    return set(re.findall(r"`([a-z]+)` extra", text))


def block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make `import module` fail as if it were not installed."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


async def test_qdrant_backend_without_qdrant_client_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    block(monkeypatch, "qdrant_client", "qdrant_client.models")
    with pytest.raises(MissingExtra, match=r"pip install 'semsearch\[qdrant\]'"):
        await QdrantIndex.create(qdrant_options(qdrant_path=tmp_path / "q"), "c", "m", 8)


def test_onnx_backend_without_onnxruntime_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.models.onnx import OnnxEngine

    block(monkeypatch, "onnxruntime")
    with pytest.raises(MissingExtra, match=r"pip install 'semsearch\[onnx\]'"):
        OnnxEngine(tmp_path / "model.onnx", "cpu", "sentence_embedding", 1)


def test_eval_without_ir_measures_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, "ir_measures")
    with pytest.raises(MissingExtra, match=r"pip install 'semsearch\[eval\]'"):
        evaluate({"q": {"d": 1.0}}, {"q": {"d": 1}})


def test_in_process_models_without_torch_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import EmbedderSettings
    from app.models import build_embedder

    block(monkeypatch, "sentence_transformers")
    with pytest.raises(MissingExtra, match=r"pip install 'semsearch\[models\]'"):
        build_embedder(EmbedderSettings())


async def test_faiss_gpu_on_without_gpu_support_names_the_extra(tmp_path: Path) -> None:
    import faiss

    from app.index.faiss.build import on_gpu
    from tests.conftest import faiss_options

    if hasattr(faiss, "StandardGpuResources"):
        pytest.skip("this faiss has GPU support: the extra is installed")
    with pytest.raises(MissingExtra, match=r"pip install 'semsearch\[gpu\]'"):
        on_gpu(faiss.IndexFlatIP(4), "flat", faiss_options(faiss_gpu="on"))
