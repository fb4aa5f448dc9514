"""`semsearch index` killed with SIGKILL at an arbitrary point, then re-run: the collection
ends up holding every document exactly once, and the gateway-facing generation is complete."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.index.faiss.layout import CollectionLayout
from tests.conftest import ROOT, qdrant_options
from tests.integration.conftest import SEMSEARCH, child_env

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def staged(index_dir: Path) -> int:
    store = CollectionLayout(index_dir, "crash").store_path
    if not store.exists():
        return 0
    with sqlite3.connect(store) as db:
        try:
            return int(db.execute("SELECT count(*) FROM docs").fetchone()[0])
        except sqlite3.OperationalError:  # the schema is being created
            return 0


def kill_when(run: subprocess.Popen[bytes], reached: Callable[[], bool]) -> None:
    """SIGKILL `run` as soon as `reached()` (it must still be running then)."""
    deadline = time.monotonic() + 120
    while not reached():
        assert run.poll() is None, "the run finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait(10)


@pytest.mark.parametrize("seed", [1, 2])
def test_killed_run_resumes_and_holds_every_document_once(tmp_path: Path, seed: int) -> None:
    count = 6000
    corpus = tmp_path / "docs.jsonl"
    with corpus.open("w") as out:
        for i in range(count):
            out.write(json.dumps({"id": f"d{i}", "text": f"document {i} " + "word " * 40}) + "\n")
    index_dir = tmp_path / "index"
    env = child_env(
        SEMSEARCH_EMBEDDER_BACKEND="fake",
        SEMSEARCH_INDEX_DIR=str(index_dir),
        SEMSEARCH_INDEX_BATCH_SIZE="16",
    )
    command = [SEMSEARCH, "index", str(corpus), "--collection", "crash", "--chunk-tokens", "0"]

    run = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    target = random.Random(seed).randint(200, count - 1000)
    kill_when(run, lambda: staged(index_dir) >= target)
    partial = staged(index_dir)
    assert 0 < partial < count
    assert CollectionLayout(index_dir, "crash").current_generation() == 0  # nothing published

    rerun = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert staged(index_dir) == count
    layout = CollectionLayout(index_dir, "crash")
    generation = layout.current_generation()
    assert generation == 1
    with sqlite3.connect(layout.generation_path(generation) / "docs.sqlite") as db:
        ids = [row[0] for row in db.execute("SELECT id FROM docs")]
    assert len(ids) == len(set(ids)) == count
    assert "unchanged" in rerun.stdout
    # the resumed run embedded only what the killed one had not committed
    added = int(next(line for line in rerun.stdout.splitlines() if "added" in line).split("│")[2])
    assert added == count - partial


def qdrant_points(path: Path) -> int:
    """Points stored by embedded Qdrant (read beside the indexer: local mode keeps them in
    SQLite, one committed row per point)."""
    storage = path / "collection" / "crash" / "storage.sqlite"
    if not storage.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{storage}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT count(*) FROM points").fetchone()[0])
    except sqlite3.OperationalError:  # created or locked at this instant
        return 0


def write_corpus(path: Path, count: int, version: str) -> None:
    with path.open("w") as out:
        for i in range(count):
            text = f"{version} document {i} " + "word " * 20
            out.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")


async def qdrant_state(path: Path) -> tuple[int, int, set[str]]:
    """Generation, searchable documents and the versions searches see."""
    import numpy as np

    from app.index.qdrant.index import QdrantIndex

    index = await QdrantIndex.open(qdrant_options(qdrant_path=path), "crash")
    try:
        probe = np.random.default_rng(0).standard_normal((4, index.dimension)).astype(np.float32)
        hits = (await index.search(probe, 50)).hits
        versions = {hit.text.split()[0] for row in hits for hit in row}
        return index.generation, await index.count(), versions
    finally:
        await index.close()


def test_killed_qdrant_reindex_leaves_the_previous_generation_serving(tmp_path: Path) -> None:
    import asyncio

    count = 1500
    qdrant = tmp_path / "qdrant"
    env = child_env(
        SEMSEARCH_EMBEDDER_BACKEND="fake",
        SEMSEARCH_INDEX_BACKEND="qdrant",
        SEMSEARCH_QDRANT_PATH=str(qdrant),
        SEMSEARCH_INDEX_DIR=str(tmp_path / "index"),
        SEMSEARCH_INDEX_BATCH_SIZE="16",
    )
    corpus = tmp_path / "docs.jsonl"
    command = [SEMSEARCH, "index", str(corpus), "--collection", "crash", "--chunk-tokens", "0"]
    write_corpus(corpus, count, "v1")
    first = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert asyncio.run(qdrant_state(qdrant)) == (1, count, {"v1"})

    write_corpus(corpus, count, "v2")  # every document changes
    run = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    target = count + random.Random(3).randint(100, count - 300)
    kill_when(run, lambda: qdrant_points(qdrant) >= target)
    # searches still see all of generation 1 and none of the killed run's writes
    assert asyncio.run(qdrant_state(qdrant)) == (1, count, {"v1"})

    rerun = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert asyncio.run(qdrant_state(qdrant)) == (2, count, {"v2"})
    unchanged = int(
        next(line for line in rerun.stdout.splitlines() if "unchanged" in line).split("│")[2]
    )
    assert 0 < unchanged < count  # the re-run continued where the killed one stopped
