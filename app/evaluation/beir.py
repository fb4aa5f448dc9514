"""Retrieval quality on BEIR-layout datasets: loading, and metrics from ir-measures.

The metrics come from a maintained library (ir-measures over pytrec_eval, the TREC reference
implementation), never from hand-written formulas.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import InvalidInput, SemsearchError
from app.extras import require
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
    `id` is accepted for `_id`, as `semsearch index` accepts both.

    Raises:
        SemsearchError: a file is missing.
        InvalidInput: a line lacks its id or text, or qrels lack a column (names the line).
    """
    paths = [folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"]
    for path in paths:
        if not path.is_file():
            raise SemsearchError(f"{path} is missing: expected the BEIR layout")
    corpus = [
        Document(doc_id, text, str(raw.get("title") or ""), {})
        for doc_id, text, raw in _records(paths[0])
    ]
    qrels = _qrels(paths[2])
    queries = {query_id: text for query_id, text, _ in _records(paths[1]) if query_id in qrels}
    return BeirDataset(folder.name, corpus, queries, qrels)


def _records(path: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(id, text, the whole record) per line of a BEIR JSONL file."""
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(raw, dict):
                raise InvalidInput(f"{where}: expected a JSON object")
            record_id = raw.get("_id", raw.get("id"))
            if not isinstance(record_id, str | int) or isinstance(record_id, bool):
                raise InvalidInput(f"{where}: no `_id` (or `id`) string or integer")
            if not isinstance(raw.get("text"), str):
                raise InvalidInput(f"{where}: `text` must be a string")
            yield str(record_id), raw["text"], raw


def _qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = {"query-id", "corpus-id", "score"} - set(reader.fieldnames or [])
        if missing:
            raise InvalidInput(f"{path.name}:1: no column {sorted(missing)[0]!r}")
        for row in reader:
            try:
                score = int(row["score"])
            except (TypeError, ValueError):
                raise InvalidInput(
                    f"{path.name}:{reader.line_num}: `score` must be an integer"
                ) from None
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = score
    return qrels


def evaluate(
    run: Run, qrels: Mapping[str, Mapping[str, int]], measures: Iterable[str] = DEFAULT_MEASURES
) -> dict[str, float]:
    """Mean of each measure over the judged queries (a query missing from `run` scores 0)."""
    ir_measures = require("ir_measures", "eval", "`semsearch eval`")
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
