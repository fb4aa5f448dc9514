"""`semsearch index` in-process with the fake embedder: what a user sees for good and bad
inputs, re-runs, and dry runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from app.cli import cli
from tests.conftest import DATA


@pytest.fixture
def index_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_BACKEND", "fake")
    monkeypatch.setenv("SEMSEARCH_INDEX_DIR", str(tmp_path / "index"))
    return tmp_path / "index"


def index(*args: str) -> Result:
    return CliRunner().invoke(cli, ["index", *args])


def summary(result: Result) -> dict[str, str]:
    """The rows of the summary table: {label: value}."""
    rows = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def test_fake_embedder_indexes_with_chunking(index_dir: Path) -> None:
    result = index(str(DATA / "corpus.jsonl"), "--collection", "c1")
    assert result.exit_code == 0, result.output
    assert summary(result)["added"] == "300"
    assert summary(result)["model"] == "fake:sentence-transformers/all-MiniLM-L6-v2"
