"""`semsearch eval` end to end on a small BEIR folder, with fake models: the report's shape,
metrics from ir-measures, the sweep, ANN recall against exact search."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.errors import InvalidInput
from app.evaluation.beir import evaluate, load_beir
from app.evaluation.search import ann_recall
from app.index.qdrant.index import QdrantIndex
from app.types import Document
from tests.conftest import load_sample_documents, load_sample_queries, qdrant_options


@pytest.fixture
def beir(tmp_path: Path) -> Path:
    folder = tmp_path / "mini"
    (folder / "qrels").mkdir(parents=True)
    docs = load_sample_documents()[:120]
    queries = [q for q in load_sample_queries() if q["expected_id"] in {d.id for d in docs}]
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in docs)
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q["id"], "text": q["text"]}) + "\n" for q in queries)
        + json.dumps({"_id": "unjudged", "text": "not in the qrels"})
        + "\n"
    )
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{q['id']}\t{q['expected_id']}\t1\n" for q in queries)
    )
    return folder


def test_metrics_come_from_ir_measures_and_missing_queries_count_as_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    perfect = evaluate({"q1": {"a": 2.0, "x": 1.0}, "q2": {"b": 1.0}}, qrels)
    assert perfect["nDCG@10"] == pytest.approx(1.0) and perfect["RR@10"] == pytest.approx(1.0)
    half = evaluate({"q1": {"a": 1.0}}, qrels)  # q2 has no results at all
    assert half["nDCG@10"] == pytest.approx(0.5)
    second = evaluate({"q1": {"x": 2.0, "a": 1.0}, "q2": {"b": 1.0}}, qrels)
    assert second["RR@10"] == pytest.approx(0.75)


def test_loader_keeps_only_judged_queries(beir: Path) -> None:
    dataset = load_beir(beir)
    assert "unjudged" not in dataset.queries
    assert len(dataset.corpus) == 120 and set(dataset.queries) == set(dataset.qrels)


def test_eval_command_reports_dense_rerank_sweep_and_recall(
    beir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_BACKEND", "fake")
    monkeypatch.setenv("SEMSEARCH_RERANKER_BACKEND", "fake")
    monkeypatch.setenv("SEMSEARCH_INDEX_DIR", str(tmp_path / "index"))
    out = tmp_path / "report.json"
    args = ["eval", str(beir), "--depths", "5,10", "--weights", "0,0.5,1", "--output", str(out)]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    report = json.loads(out.read_text())
    assert report["queries"] == len(load_beir(beir).queries)
    assert set(report["dense"]) == {"nDCG@10", "R@10", "R@100", "RR@10"}
    assert 0 < report["dense"]["nDCG@10"] <= 1
    assert len(report["sweep"]) == 6
    zero = [s for s in report["sweep"] if s["weight"] == 0.0]
    assert all(
        s["nDCG@10"] == pytest.approx(report["hybrid"]["nDCG@10"]) for s in zero
    )  # w=0: the first stage's order
    assert set(report["lexical"]) == set(report["hybrid"]) == set(report["dense"])
    sweep = {(p["method"], p["weight"]): p["nDCG@10"] for p in report["fusion_sweep"]}
    assert len(sweep) == 22  # blend and rrf, 0 to 1 by 0.1
    assert sweep[("blend", 0.0)] == pytest.approx(report["dense"]["nDCG@10"])
    assert sweep[("blend", 1.0)] == pytest.approx(report["lexical"]["nDCG@10"], abs=0.02)
    weight = report["calibration"]["weight"]
    assert sweep[("blend", weight)] == pytest.approx(report["hybrid"]["nDCG@10"])
    assert report["ann_recall@10"] == pytest.approx(1.0)  # flat index: exact
    assert report["indexing"]["added"] == 120
    again = CliRunner().invoke(cli, args)  # the corpus is reused, not re-embedded
    assert again.exit_code == 0
    assert json.loads(out.read_text())["indexing"]["unchanged"] == 120
    assert (
        "nDCG@10" in first.output and "w=0.5" in first.output and "lexical (BM25)" in first.output
    )


async def test_ann_recall_is_measured_on_qdrant_too(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = await QdrantIndex.create(qdrant_options(qdrant_path=tmp_path / "q"), "c", "m", 8)
    await index.upsert([Document(f"d{i}", f"t{i}") for i in range(50)], vectors)
    await index.publish()
    assert await index.exact_ids(vectors[:3], 1) == [["d0"], ["d1"], ["d2"]]
    assert await ann_recall(index, vectors[:20]) == pytest.approx(1.0)  # local mode is exact
    await index.close()


def test_loader_accepts_id_for_underscore_id_and_names_bad_lines(
    beir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = beir / "corpus.jsonl"
    corpus.write_text(corpus.read_text().replace('"_id"', '"id"'))
    assert len(load_beir(beir).corpus) == 120
    corpus.write_text('{"id": "1", "text": "x"}\n{"title": "no id", "text": "x"}\n')
    with pytest.raises(InvalidInput, match=re.escape("corpus.jsonl:2: no `_id`")):
        load_beir(beir)
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_BACKEND", "fake")
    result = CliRunner().invoke(cli, ["eval", str(beir)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "corpus.jsonl:2: no `_id`" in result.output
    corpus.write_text('{"id": "1", "text": "x"}\n')
    (beir / "qrels" / "test.tsv").write_text("query\tdoc\tscore\n")
    with pytest.raises(InvalidInput, match=re.escape("test.tsv:1: no column 'corpus-id'")):
        load_beir(beir)
