"""Real processes: the CLI builds an index with the real model; services run under uvicorn."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.processes import Service, child_env, free_port, start_service
from tests.conftest import DATA, ROOT

SEMSEARCH = str(Path(sys.executable).with_name("semsearch"))


@pytest.fixture(scope="session")
def real_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/corpus.jsonl indexed by `semsearch index` with the real all-MiniLM-L6-v2."""
    index_dir = tmp_path_factory.mktemp("real-index")
    result = subprocess.run(
        [
            SEMSEARCH,
            "index",
            str(DATA / "corpus.jsonl"),
            "--collection",
            "default",
            "--index-dir",
            str(index_dir),
        ],
        env=child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "added" in result.stdout and "300" in result.stdout
    return index_dir


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def services() -> Iterator[list[Service]]:
    """Collects started services and stops them all at the end of the test."""
    started: list[Service] = []
    yield started
    for service in reversed(started):
        service.stop()


__all__ = ["SEMSEARCH", "Service", "child_env", "free_port", "start_service"]
