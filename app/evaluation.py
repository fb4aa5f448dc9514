"""Retrieval quality on BEIR-layout datasets: loading, and metrics from ir-measures.

The metrics come from a maintained library (ir-measures over pytrec_eval, the TREC reference
implementation), never from hand-written formulas.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from app.errors import SemsearchError
from app.types import Document

DEFAULT_MEASURES = ("nDCG@10", "R@10", "R@100", "RR@10")
Run = Mapping[str, Mapping[str, float]]  # query id -> document id -> score (higher is better)


@dataclass(frozen=True)
class BeirDataset:
    name: str
    corpus: list[Document]
    queries: dict[str, str]  # only the queries judged in the chosen split
    qrels: dict[str, dict[str, int]]


def load_beir(folder: Path, split: str = "test") -> BeirDataset:
    """corpus.jsonl (`_id`, `title`, `text`), queries.jsonl (`_id`, `text`), qrels/<split>.tsv.

    Raises:
        SemsearchError: a file is missing.
    """
    paths = [folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"]
    for path in paths:
        if not path.is_file():
            raise SemsearchError(f"{path} is missing: expected the BEIR layout")
    corpus = [
        Document(str(raw["_id"]), raw["text"], raw.get("title") or "", {})
        for raw in map(json.loads, _lines(paths[0]))
    ]
    qrels: dict[str, dict[str, int]] = {}
    with paths[2].open() as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    queries = {
        str(raw["_id"]): raw["text"]
        for raw in map(json.loads, _lines(paths[1]))
        if str(raw["_id"]) in qrels
    }
    return BeirDataset(folder.name, corpus, queries, qrels)


def evaluate(
    run: Run, qrels: Mapping[str, Mapping[str, int]], measures: Iterable[str] = DEFAULT_MEASURES
) -> dict[str, float]:
    """Mean of each measure over the judged queries (a query missing from `run` scores 0)."""
    import ir_measures

    parsed = [ir_measures.parse_measure(m) for m in measures]
    totals = {str(m): 0.0 for m in parsed}
    for metric in ir_measures.iter_calc(
        parsed,
        {q: dict(docs) for q, docs in qrels.items()},
        {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items()},
    ):
        totals[str(metric.measure)] += float(metric.value)
    # pytrec_eval skips queries absent from the run; they count as 0, not as missing
    return {name: total / max(len(qrels), 1) for name, total in totals.items()}


def _lines(path: Path) -> Iterable[str]:
    with path.open(encoding="utf-8") as handle:
        yield from (line for line in handle if line.strip())
