"""Batch indexing: read documents, chunk them, embed what changed, stage it, publish.

Idempotent by id + content hash: a re-run over the same input embeds nothing and publishes
nothing (an id repeated in the input is indexed from its last occurrence only); a changed
document is re-embedded and replaced, and chunks a shorter new version no longer has are
deleted. Streaming and resumable: the input is read once for its ids, then documents are
read, embedded and committed in batches, so memory grows only with the ids and a killed run
loses at most the two batches in flight (one embedding, one being written); a re-run skips
everything committed.
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from app.errors import InvalidInput
from app.index import VectorIndex, content_hash
from app.models import Embedder, Embeddings
from app.models.tokens import TextTokenizer
from app.types import Document, InputType, ModelInfo, Truncate, lone_surrogate_at

InputFormat = Literal["auto", "jsonl", "csv", "dir"]
TEXT_SUFFIXES = (".txt", ".md", ".markdown")


@dataclass
class IndexReport:
    """Counts are of source documents; `records` counts the chunks written."""

    read: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    duplicates: int = 0  # earlier occurrences of an id repeated later in the input: ignored
    records_written: int = 0
    records_removed: int = 0
    seconds: float = 0.0
    generation: int | None = None  # None: nothing changed, nothing published
    dry_run: bool = False

    @property
    def docs_per_s(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0


# -- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CsvColumns:
    id: str = "id"
    text: str = "text"
    title: str | None = "title"
    metadata: tuple[str, ...] | None = None  # None: every other column


# A field may hold a whole book; an unclosed quote still fails here rather than reading the
# rest of a large file into memory (Python's default limit is 128 KiB).
CSV_FIELD_LIMIT = 256 * 2**20


def detect_format(path: Path, fmt: InputFormat) -> InputFormat:
    """The format to read `path` as (by extension for "auto").

    Raises:
        InvalidInput: a directory read as a file, or a file read as a directory.
    """
    kind: InputFormat
    if fmt != "auto":
        kind = fmt
    elif path.is_dir():
        kind = "dir"
    elif path.suffix.lower() in (".csv", ".tsv"):
        kind = "csv"
    else:
        kind = "jsonl"
    if kind == "dir" and not path.is_dir():
        raise InvalidInput(f"{path} is not a directory (format 'dir' reads a folder of .txt/.md)")
    if kind != "dir" and path.is_dir():
        raise InvalidInput(f"{path} is a directory, not a {kind.upper()} file (use format 'dir')")
    return kind


def read_documents(
    path: Path, fmt: InputFormat = "auto", columns: CsvColumns | None = None
) -> DocumentFile:
    """Documents from a JSONL file, a CSV/TSV file, or a directory of .txt/.md files.

    Raises:
        InvalidInput: the path does not fit the format (at once), or a document is invalid
            (when it is read; the message names the file, the line and the field).
    """
    return DocumentFile(path, detect_format(path, fmt), columns or CsvColumns())


@dataclass(frozen=True)
class DocumentFile:
    """The documents of a file or directory, read anew by each iteration: indexing reads its
    input twice (ids first) rather than holding it in memory."""

    path: Path
    kind: InputFormat
    columns: CsvColumns

    def __iter__(self) -> Iterator[Document]:
        if self.kind == "dir":
            return read_directory(self.path)
        if self.kind == "csv":
            return read_csv(self.path, self.columns)
        return read_jsonl(self.path)


def count_documents(path: Path, fmt: InputFormat = "auto") -> int:
    """How many documents `read_documents` will yield (cheap next to embedding), for ETAs."""
    kind = detect_format(path, fmt)
    if kind == "dir":
        return sum(1 for _ in _text_files(path))
    with path.open("rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return max(lines - 1, 0) if kind == "csv" else lines


def read_jsonl(path: Path) -> Iterator[Document]:
    """`id` and `text` required (BEIR's `_id` accepted), `title` and `metadata` optional.
    UTF-8, with or without a byte-order mark.

    Raises:
        InvalidInput: a line is not a UTF-8 JSON object with those fields (names the line).
    """
    with _open_text(path, newline="\n") as handle:  # JSON may hold a bare \r as whitespace
        for number, line in enumerate(handle, start=1):
            where = f"{path.name}:{number}"
            _check_utf8(line, where)
            if line.strip():
                yield _document(line, where)


def _open_text(path: Path, newline: str) -> IO[str]:
    """`path` for reading as UTF-8 (a byte-order mark is skipped). Bytes that are not UTF-8
    become lone surrogates, so `_check_utf8` can name the line instead of failing mid-buffer."""
    return path.open(encoding="utf-8-sig", errors="surrogateescape", newline=newline)


def _check_utf8(line: str, where: str) -> None:
    at = lone_surrogate_at(line)
    if at is not None:
        byte = ord(line[at]) - 0xDC00  # surrogateescape maps byte b to U+DC00 + b
        raise InvalidInput(f"{where}: not UTF-8 text (byte 0x{byte:02x} at character {at + 1})")


def _document(line: str, where: str) -> Document:
    try:
        raw: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{where}: not valid JSON ({exc.msg})") from exc
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: expected a JSON object")
    return _checked(
        raw.get("id", raw.get("_id")),
        raw.get("text"),
        raw.get("title") or "",
        raw.get("metadata") or {},
        where,
    )


def _checked(
    doc_id: object,
    text: object,
    title: object,
    metadata: object,
    where: str,
    names: tuple[str, str, str] = ("id", "text", "title"),
) -> Document:
    """A valid Document, or InvalidInput naming `where` and the field (`names`: what the
    input calls id, text and title, e.g. mapped CSV columns)."""
    id_name, text_name, title_name = names
    if not isinstance(doc_id, str | int) or isinstance(doc_id, bool) or str(doc_id) == "":
        raise InvalidInput(f"{where}: `{id_name}` must be a non-empty string or integer")
    if "#" in str(doc_id):
        raise InvalidInput(f"{where}: `{id_name}` must not contain '#' (it marks chunks: doc#3)")
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"{where}: `{text_name}` must be a non-empty string")
    if not isinstance(title, str):
        raise InvalidInput(f"{where}: `{title_name}` must be a string")
    if not isinstance(metadata, dict):
        raise InvalidInput(f"{where}: `metadata` must be a JSON object")
    try:
        stored = json.dumps(metadata, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise InvalidInput(
            f"{where}: `metadata` holds NaN or Infinity (not JSON numbers; no index stores them)"
        ) from None
    for name, value in ((id_name, str(doc_id)), (text_name, text), (title_name, title)):
        _check_unicode(value, where, name)
    _check_unicode(stored, where, "metadata")
    return Document(id=str(doc_id), text=text, title=title, metadata=metadata)


def _check_unicode(value: str, where: str, name: str) -> None:
    """JSON escapes can spell a lone surrogate (\\ud800), which no UTF-8 store accepts."""
    at = lone_surrogate_at(value)
    if at is not None:
        raise InvalidInput(
            f"{where}: `{name}` holds a lone surrogate (U+{ord(value[at]):04X}): not valid Unicode"
        )


def read_csv(path: Path, columns: CsvColumns) -> Iterator[Document]:
    """One document per row; columns mapped by name (header row required). UTF-8, with or
    without a byte-order mark.

    Raises:
        InvalidInput: a mapped column is missing, a row has no id or text, or the file is not
            UTF-8 CSV (names the line).
    """
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    with _open_text(path, newline="") as handle:  # the csv module splits lines itself
        lines = _utf8_lines(handle, path.name)
        reader = csv.DictReader(lines, delimiter=delimiter)
        try:
            header = reader.fieldnames or []
        except csv.Error as exc:
            raise InvalidInput(f"{path.name}:1: not valid CSV ({exc})") from None
        for needed in (columns.id, columns.text):
            if needed not in header:
                raise InvalidInput(
                    f"{path.name}: no column {needed!r} (columns: {', '.join(header)})"
                )
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise InvalidInput(f"{path.name}:1: column {repeated[0]!r} appears twice")
        title = columns.title if columns.title in header else None
        used = {columns.id, columns.text, title}
        extra = (
            columns.metadata
            if columns.metadata is not None
            else tuple(c for c in header if c not in used)
        )
        for missing in set(extra) - set(header):
            raise InvalidInput(f"{path.name}: no metadata column {missing!r}")
        names = (columns.id, columns.text, title or "title")
        while True:
            first_line = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InvalidInput(
                    f"{path.name}:{reader.line_num}: not valid CSV ({exc})"
                ) from None
            yield _checked(
                row.get(columns.id) or "",
                row.get(columns.text) or "",
                (row.get(title) or "") if title else "",
                {c: row[c] for c in extra if row.get(c) not in (None, "")},
                f"{path.name}:{first_line}",
                names,
            )


def _utf8_lines(handle: IO[str], name: str) -> Iterator[str]:
    for number, line in enumerate(handle, start=1):
        _check_utf8(line, f"{name}:{number}")
        yield line


def read_directory(root: Path) -> Iterator[Document]:
    """Every .txt/.md file below `root`: id = relative path, title = the first Markdown
    heading (or the file name). Empty files are skipped."""
    for path in _text_files(root):
        text = path.read_text(encoding="utf-8-sig", errors="replace").strip()
        if not text:
            continue
        title = path.stem.replace("_", " ").replace("-", " ")
        first, _, rest = text.partition("\n")
        if path.suffix.lower() != ".txt" and first.startswith("# "):
            title, text = first[2:].strip(), rest.strip() or first[2:].strip()
        relative = path.relative_to(root).as_posix()
        yield Document(
            id=relative,
            text=text,
            title=title,
            metadata={"path": relative, "format": path.suffix.lower().lstrip(".")},
        )


def _text_files(root: Path) -> Iterator[Path]:
    return (p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)


# -- chunking ---------------------------------------------------------------------------------


class SpanTokenizer(Protocol):
    """What chunking needs of a tokenizer: its window and where each token sits in a text."""

    @property
    def window(self) -> int: ...

    @property
    def special_tokens(self) -> int: ...

    def spans(self, text: str) -> list[tuple[int, int]]: ...


_WORD = re.compile(r"\w+")


class WordTokenizer:
    """Words (runs of word characters) as tokens: how the fake embedder counts its window.
    A fake has no tokenizer files; its chunks must fit its window in its own words."""

    special_tokens = 0

    def __init__(self, window: int) -> None:
        self.window = window

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [match.span() for match in _WORD.finditer(text)]


class Chunker:
    """Cuts a document whose passage (title + text) would not fit the model window into
    overlapping chunks `doc#0`, `doc#1`, ... that do, on token boundaries. Each chunk keeps
    the title and the metadata, plus `parent_id` and `chunk` (its position)."""

    def __init__(self, tokenizer: SpanTokenizer, max_tokens: int | None = None, overlap: int = 32):
        self._tok = tokenizer
        self.max_tokens = min(max_tokens or tokenizer.window, tokenizer.window)
        self.overlap = overlap

    @classmethod
    def for_model(
        cls, model: ModelInfo, max_tokens: int | None = None, overlap: int = 32
    ) -> Chunker:
        """Chunks that fit `model`'s window, cut with its own tokenizer (fetched alone when
        the model is remote: chunking needs no weights). A fake model counts words."""
        if model.backend == "fake":
            return cls(WordTokenizer(model.max_tokens), max_tokens, overlap)
        from app.models.paths import model_folder

        folder = model_folder(model.model_id, tokenizer_only=True)
        return cls(TextTokenizer.from_folder(folder, model.max_tokens), max_tokens, overlap)

    def split(self, doc: Document) -> list[Document]:
        title_tokens = len(self._tok.spans(doc.title)) + 1 if doc.title else 0
        room = max(
            16, min(self.max_tokens, self._tok.window - self._tok.special_tokens) - title_tokens
        )
        spans = self._tok.spans(doc.text)
        if len(spans) <= room:
            return [doc]
        overlap = min(self.overlap, room // 2)
        chunks: list[Document] = []
        start = 0
        while True:
            end = min(start + room, len(spans))
            if end < len(spans):  # do not cut a word in two: end where a word starts
                end = _word_start(spans, end, floor=start + 1)
            chunks.append(
                Document(
                    id=f"{doc.id}#{len(chunks)}",
                    text=doc.text[spans[start][0] : spans[end - 1][1]],
                    title=doc.title,
                    metadata={**doc.metadata, "parent_id": doc.id, "chunk": len(chunks)},
                    parent=doc.id,
                )
            )
            if end == len(spans):
                return chunks
            start = _word_start(spans, max(end - overlap, start + 1), floor=start + 1)


def _word_start(spans: list[tuple[int, int]], i: int, floor: int) -> int:
    """The nearest token at or before `i` (not before `floor`) that begins a word, i.e. is
    separated from the token before it by a gap in the text (word pieces touch); `i` itself
    when no word starts in between (one very long word)."""
    for j in range(i, floor - 1, -1):
        if spans[j][0] != spans[j - 1][1]:
            return j
    return i


# -- the run ----------------------------------------------------------------------------------


@dataclass
class _Planned:
    """One batch of source documents, diffed against what is staged."""

    to_embed: list[Document]
    stale: list[str]
    size: int  # source documents consumed, the ignored earlier copies of repeated ids included
    vectors: asyncio.Task[Embeddings] | None = None


async def index_documents(
    documents: Iterable[Document],
    index: VectorIndex,
    embedder: Embedder,
    *,
    chunker: Chunker | None = None,
    batch_size: int = 256,
    delete: Sequence[str] = (),
    dry_run: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> IndexReport:
    """Embed and stage every new or changed document, delete `delete` (source document ids),
    then publish one generation. With `dry_run`, count what would change and write nothing.

    An id repeated anywhere in `documents` is indexed once, from its last occurrence (the
    earlier ones are counted in `report.duplicates`), so a re-run changes nothing. To know
    which occurrence is the last, `documents` is read twice: first for its ids alone (what
    `read_documents` returns reads its file again; a one-shot iterator is kept in memory).
    A bad document thus fails the run before anything is written.

    Batch N+1 is read, chunked and embedded (the model runs on its worker thread) while batch
    N is written, so the model is not idle during staging. Batches are committed in input
    order. Passages are embedded with truncation at the end as a safety net: with a chunker
    they fit the window already.
    """
    report = IndexReport(dry_run=dry_run)
    started = time.perf_counter()
    if isinstance(documents, Iterator):
        documents = list(documents)
    last: dict[str, int] = {}
    for position, doc in enumerate(documents):
        last[doc.id] = position
        report.read += 1
    report.duplicates = report.read - len(last)
    pending: _Planned | None = None
    try:
        for batch, consumed in _batches(documents, last, batch_size):
            planned = await _plan(batch, consumed, index, chunker, report)
            if planned.to_embed and not dry_run:
                passages = [r.passage for r in planned.to_embed]
                planned.vectors = asyncio.create_task(
                    embedder.embed(passages, InputType.PASSAGE, Truncate.END)
                )
            previous, pending = pending, planned
            if previous is not None:
                await _commit(previous, index, on_batch, dry_run)
        if pending is not None:
            await _commit(pending, index, on_batch, dry_run)
            pending = None
    finally:  # on an error, do not leave the next batch computing in the background
        if pending is not None and pending.vectors is not None:
            pending.vectors.cancel()
    if delete:
        found = await index.children(list(delete))
        report.deleted = len(found)
        doomed = [record for children in found.values() for record in children]
        report.records_removed += len(doomed)
        if doomed and not dry_run:
            await index.delete(doomed)
    if not dry_run:
        report.generation = await index.publish()
    report.seconds = time.perf_counter() - started
    return report


async def _plan(
    batch: list[Document],
    consumed: int,
    index: VectorIndex,
    chunker: Chunker | None,
    report: IndexReport,
) -> _Planned:
    """What of `batch` must be (re-)embedded and which chunks are gone; counts into `report`."""
    known = await index.children([doc.id for doc in batch])
    planned = _Planned([], [], consumed)
    for doc in batch:
        records = chunker.split(doc) if chunker else [doc]
        before = known.get(doc.id, {})
        changed = [r for r in records if before.get(r.id) != content_hash(r)]
        gone = [record for record in before if record not in {r.id for r in records}]
        planned.to_embed += changed
        planned.stale += gone
        if not before:
            report.added += 1
        elif changed or gone:
            report.updated += 1
        else:
            report.unchanged += 1
    report.records_written += len(planned.to_embed)
    report.records_removed += len(planned.stale)
    return planned


async def _commit(
    planned: _Planned,
    index: VectorIndex,
    on_batch: Callable[[int], None] | None,
    dry_run: bool,
) -> None:
    """Stage one planned batch: its new vectors, then the removal of its stale chunks."""
    if not dry_run:
        if planned.vectors is not None:
            await index.upsert(planned.to_embed, (await planned.vectors).vectors)
        if planned.stale:
            await index.delete(planned.stale)
    if on_batch is not None:
        on_batch(planned.size)


def _batches(
    documents: Iterable[Document], last: dict[str, int], size: int
) -> Iterator[tuple[list[Document], int]]:
    """Batches of up to `size` documents, each the last occurrence of its id (`last`: id ->
    position), with how many source documents each consumed."""
    batch: list[Document] = []
    consumed = 0
    for position, doc in enumerate(documents):
        consumed += 1
        if last.get(doc.id) == position:
            batch.append(doc)
            if len(batch) == size:
                yield batch, consumed
                batch, consumed = [], 0
    if consumed:
        yield batch, consumed


def read_id_list(path: Path) -> list[str]:
    """Document ids, one per line (blank lines and `#` comments ignored)."""
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
