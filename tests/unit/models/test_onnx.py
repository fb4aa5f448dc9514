"""Where ONNX exports are cached: a new export recipe or new weights never reuse an old one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.models import onnx


def test_export_cache_key_covers_recipe_weights_and_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    weights = model / "model.safetensors"
    weights.write_bytes(b"weights")
    cache = tmp_path / "cache"

    first = onnx.exported_path(model, "embedding", False, cache)
    assert first == onnx.exported_path(model, "embedding", False, cache)  # stable
    assert onnx.exported_path(model, "embedding", True, cache).parent == first.parent
    assert onnx.exported_path(model, "reranker", False, cache) != first

    monkeypatch.setattr(onnx, "RECIPE", onnx.RECIPE + "-next")
    assert onnx.exported_path(model, "embedding", False, cache) != first
    monkeypatch.undo()

    os.utime(weights, ns=(0, 1))
    assert onnx.exported_path(model, "embedding", False, cache) != first
