"""The collection's document store: SQLite, the source of truth the FAISS index is built from.

It holds every staged document (id, content hash, title, text, metadata, vector). Writes are
one transaction per batch, so an indexing run killed at any point keeps what it committed and
a re-run continues from there. `version` counts committed write batches; a generation records
the version it was built from, which is how `publish()` knows there is something to publish.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from app.errors import InvalidInput
from app.types import Document, FloatArray

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,  -- the FAISS id; stable for a document's life
    id       TEXT NOT NULL UNIQUE,
    parent   TEXT NOT NULL,                      -- the source document of a chunk (else id)
    hash     TEXT NOT NULL,
    title    TEXT NOT NULL,
    text     TEXT NOT NULL,
    metadata TEXT NOT NULL,                      -- JSON object
    vector   BLOB NOT NULL                       -- float32, unit length
);
CREATE INDEX IF NOT EXISTS docs_parent ON docs (parent);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# What a generation snapshot keeps: everything a search result needs, no vectors.
SNAPSHOT_SCHEMA = """
CREATE TABLE {db}.docs (
    seq      INTEGER PRIMARY KEY,
    id       TEXT NOT NULL,
    title    TEXT NOT NULL,
    text     TEXT NOT NULL,
    metadata TEXT NOT NULL
);
"""


class DocumentStore:
    """Staged documents of one collection. Used from one thread at a time.

    `read_only` writes nothing, not even SQLite's -wal/-shm files: with no -wal file (no
    writer is active, or the last one closed cleanly) the database is read as immutable, so
    open it under the collection's reader lock.
    """

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        if read_only:
            wal = path.with_name(path.name + "-wal").exists()
            uri = f"file:{path}?mode=ro" + ("" if wal else "&immutable=1")
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            return
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @property
    def version(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return int(row[0]) if row else 0

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM docs").fetchone()[0])

    def children(self, parents: Sequence[str]) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for chunk in _chunks(list(parents), 500):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT parent, id, hash FROM docs WHERE parent IN ({marks})", chunk
            )
            for parent, doc_id, digest in rows:
                found.setdefault(parent, {})[doc_id] = digest
        return found

    def hashes(self) -> dict[str, str]:
        """Every staged record's content hash, by id."""
        return dict(self._db.execute("SELECT id, hash FROM docs").fetchall())

    def existing(self, ids: Sequence[str]) -> list[str]:
        found: list[str] = []
        for chunk in _chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            found += [
                r[0] for r in self._db.execute(f"SELECT id FROM docs WHERE id IN ({marks})", chunk)
            ]
        return found

    def upsert(
        self, documents: Sequence[Document], hashes: Sequence[str], vectors: FloatArray
    ) -> None:
        rows = [
            (
                doc.id,
                doc.parent_id,
                digest,
                doc.title,
                doc.text,
                _metadata_json(doc),
                np.ascontiguousarray(vector, dtype=np.float32).tobytes(),
            )
            for doc, digest, vector in zip(documents, hashes, vectors, strict=True)
        ]
        with self._transaction():
            self._db.executemany(
                "INSERT INTO docs (id, parent, hash, title, text, metadata, vector) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET parent=excluded.parent, "
                "hash=excluded.hash, title=excluded.title, text=excluded.text, "
                "metadata=excluded.metadata, vector=excluded.vector",
                rows,
            )

    def delete(self, ids: Sequence[str]) -> int:
        present = self.existing(ids)
        if not present:
            return 0  # nothing to change, so no new version to publish
        with self._transaction():
            for chunk in _chunks(present, 500):
                marks = ",".join("?" * len(chunk))
                self._db.execute(f"DELETE FROM docs WHERE id IN ({marks})", chunk)
        return len(present)

    def iter_vectors(
        self, dimension: int, batch: int = 8192
    ) -> Iterator[tuple[np.ndarray, FloatArray]]:
        """(faiss ids, vectors) in batches, so building an index never holds two copies."""
        last = -1
        while True:
            rows = self._db.execute(
                "SELECT seq, vector FROM docs WHERE seq > ? ORDER BY seq LIMIT ?", (last, batch)
            ).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
            yield ids, vectors.reshape(len(rows), dimension)
            last = int(ids[-1])

    def sample(self, n: int, seed: int) -> list[tuple[Document, FloatArray]]:
        """Up to `n` staged records, drawn at random (the same ones for the same seed and
        contents), with their vectors."""
        seqs = np.fromiter(
            (r[0] for r in self._db.execute("SELECT seq FROM docs ORDER BY seq")), dtype=np.int64
        )
        if len(seqs) > n:
            seqs = np.sort(np.random.default_rng(seed).choice(seqs, size=n, replace=False))
        out: list[tuple[Document, FloatArray]] = []
        for chunk in _chunks([str(s) for s in seqs], 500):
            rows = self._db.execute(
                "SELECT id, parent, title, text, metadata, vector FROM docs "
                f"WHERE seq IN ({','.join('?' * len(chunk))}) ORDER BY seq",
                chunk,
            )
            for doc_id, parent, title, text, metadata, vector in rows:
                doc = Document(doc_id, text, title, json.loads(metadata), parent)
                out.append((doc, np.frombuffer(vector, dtype=np.float32)))
        return out

    def iter_passages(self, batch: int = 8192) -> Iterator[tuple[int, str]]:
        """(FAISS id, passage) in FAISS-id order: the text the lexical index is built from,
        title and body as the models see them (`Document.passage`)."""
        last = -1
        while True:
            rows = self._db.execute(
                "SELECT seq, title, text FROM docs WHERE seq > ? ORDER BY seq LIMIT ?",
                (last, batch),
            ).fetchall()
            if not rows:
                return
            for seq, title, text in rows:
                yield seq, Document(id="", text=text, title=title).passage
            last = int(rows[-1][0])

    def write_snapshot(self, target: Path) -> None:
        """Copy ids, texts and metadata (not vectors) into a new SQLite file for a generation."""
        self._db.execute("ATTACH DATABASE ? AS snap", (str(target),))
        try:
            with self._transaction(bump_version=False):
                self._db.execute(SNAPSHOT_SCHEMA.format(db="snap"))
                self._db.execute(
                    "INSERT INTO snap.docs SELECT seq, id, title, text, metadata FROM main.docs"
                )
        finally:
            self._db.execute("DETACH DATABASE snap")

    def _transaction(self, bump_version: bool = True) -> _Transaction:
        return _Transaction(self._db, bump_version)


class _Transaction:
    def __init__(self, db: sqlite3.Connection, bump_version: bool) -> None:
        self._db = db
        self._bump = bump_version

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._db.execute("ROLLBACK")
            return
        if self._bump:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('version', '1') ON CONFLICT(key) "
                "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
            )
        self._db.execute("COMMIT")


def _metadata_json(doc: Document) -> str:
    """Strict JSON: SQLite's JSON functions (filters) reject NaN and Infinity in a row, which
    would break every filtered search of the collection, not just this document's."""
    try:
        return json.dumps(doc.metadata, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise InvalidInput(
            f"document {doc.id!r}: metadata holds NaN or Infinity, which JSON cannot store",
            field="metadata",
        ) from None


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
