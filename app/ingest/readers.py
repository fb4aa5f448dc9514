"""Input readers: documents from JSONL, CSV/TSV or a directory of text files, checked as they
are read (a bad document is one error naming the file, the line and the field)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from app.errors import InvalidInput
from app.types import Document, lone_surrogate_at

InputFormat = Literal["auto", "jsonl", "csv", "dir"]
TEXT_SUFFIXES = (".txt", ".md", ".markdown")


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


def read_id_list(path: Path) -> list[str]:
    """Document ids, one per line (blank lines and `#` comments ignored)."""
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
