"""Batch indexing: read documents, embed what changed, stage it, publish a generation.

Idempotent by id + content hash: a re-run over the same input embeds nothing and publishes
nothing; a changed document is re-embedded and replaced. Resumable: every batch is committed
to the collection's store before the next is read, so a killed run loses at most one batch
and a re-run skips everything already committed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from app.errors import InvalidInput
from app.index import VectorIndex, content_hash
from app.models import Embedder
from app.types import Document, InputType, Truncate


@dataclass
class IndexReport:
    read: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    seconds: float = 0.0
    generation: int | None = None  # None: nothing changed, nothing published

    @property
    def docs_per_s(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0


def read_jsonl(path: Path) -> Iterator[Document]:
    """Documents from a JSONL file: `id` and `text` required, `title` and `metadata` optional.

    Raises:
        InvalidInput: a line is not a JSON object with those fields (names the line).
    """
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield _document(line, f"{path.name}:{number}")


def _document(line: str, where: str) -> Document:
    try:
        raw: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{where}: not valid JSON ({exc.msg})") from exc
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: expected a JSON object")
    doc_id = raw.get("id", raw.get("_id"))  # `_id`: BEIR corpora index as they are
    text = raw.get("text")
    title = raw.get("title") or ""
    metadata = raw.get("metadata") or {}
    if not isinstance(doc_id, str | int) or isinstance(doc_id, bool) or str(doc_id) == "":
        raise InvalidInput(f"{where}: `id` must be a non-empty string or integer")
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"{where}: `text` must be a non-empty string")
    if not isinstance(title, str):
        raise InvalidInput(f"{where}: `title` must be a string")
    if not isinstance(metadata, dict):
        raise InvalidInput(f"{where}: `metadata` must be a JSON object")
    return Document(id=str(doc_id), text=text, title=title, metadata=metadata)


def count_lines(path: Path) -> int:
    """Non-empty lines, for the progress bar's total (cheap next to embedding)."""
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


async def index_documents(
    documents: Iterable[Document],
    index: VectorIndex,
    embedder: Embedder,
    *,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> IndexReport:
    """Embed and stage every new or changed document, then publish one generation.

    Passages longer than the model window are cut at the end (asked for explicitly here:
    an index must take every document a user gives it).
    """
    report = IndexReport()
    started = time.perf_counter()
    for batch in _batches(documents, batch_size):
        known = await index.existing_hashes([doc.id for doc in batch])
        changed = [doc for doc in batch if known.get(doc.id) != content_hash(doc)]
        report.read += len(batch)
        report.updated += sum(1 for doc in changed if doc.id in known)
        report.added += sum(1 for doc in changed if doc.id not in known)
        report.unchanged += len(batch) - len(changed)
        if changed:
            embedded = await embedder.embed(
                [doc.passage for doc in changed], InputType.PASSAGE, Truncate.END
            )
            await index.upsert(changed, embedded.vectors)
        if on_batch is not None:
            on_batch(len(batch))
    report.generation = await index.publish()
    report.seconds = time.perf_counter() - started
    return report


def _batches(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
    """Batches with unique ids (the last occurrence of a repeated id wins)."""
    iterator = iter(documents)
    while batch := list(islice(iterator, size)):
        yield list({doc.id: doc for doc in batch}.values())
