"""The write journal: what makes a write acknowledged over HTTP durable before it is applied.

Every accepted write (documents to upsert, or ids to delete, for one collection) is one row
of a SQLite database in WAL mode with `synchronous=FULL`: its commit is fsynced before the
gateway answers, so an acknowledged write survives a killed process (or a lost machine, with
its disk). The writer (`app.ingest.writer`) applies pending rows in order through the
indexing core and marks them searchable once a published generation holds them; a restarted
gateway applies again whatever was not yet searchable (the core is idempotent: what is
already staged is not embedded twice).

Why a file and not Redis: the embedded default has no Redis; the Redis the stacks run is a
cache (LRU eviction, no persistence), and one with AOF `appendfsync always` would be a second
database to operate whose replication is asynchronous (a failover can lose acknowledged
writes). An fsynced file is what can be proven here with kill -9, and it needs nothing.

One gateway process per journal folder (an exclusive lock on it says so at start).
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

from app import metrics
from app.errors import SemsearchError
from app.types import Document

_SCHEMA = """
CREATE TABLE IF NOT EXISTS writes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order writes are applied in
    id         TEXT NOT NULL UNIQUE,               -- the write id the client gets
    collection TEXT NOT NULL,
    uid        TEXT NOT NULL,                      -- the collection's identity when accepted
    kind       TEXT NOT NULL,                      -- upsert | delete
    payload    TEXT,                               -- JSON; dropped once the write is finished
    items      INTEGER NOT NULL,                   -- documents or ids
    bytes      INTEGER NOT NULL,
    state      TEXT NOT NULL,                      -- pending | searchable | failed
    generation INTEGER,                            -- the first generation that holds it
    reason     TEXT,                               -- why it failed
    created    REAL NOT NULL,
    finished   REAL
);
CREATE INDEX IF NOT EXISTS writes_pending ON writes (state, collection, seq);
-- which documents the unfinished writes touch: GET .../documents/{id} answers from here first
CREATE TABLE IF NOT EXISTS touched (
    seq        INTEGER NOT NULL,
    collection TEXT NOT NULL,
    doc_id     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS touched_doc ON touched (collection, doc_id, seq);
CREATE INDEX IF NOT EXISTS touched_seq ON touched (seq);
"""


class WriteKind(StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"


class WriteState(StrEnum):
    PENDING = "pending"  # acknowledged (durable), not yet in a published generation
    SEARCHABLE = "searchable"  # in the generation searches see (or a later one)
    FAILED = "failed"  # will never be applied; `reason` says why


@dataclass(frozen=True)
class JournaledWrite:
    """One acknowledged write, as the writer applies it."""

    seq: int
    id: str
    collection: str
    uid: str
    kind: WriteKind
    documents: list[Document]  # upserts
    ids: list[str]  # deletions
    bytes: int


@dataclass(frozen=True)
class WriteStatus:
    """What `GET /v1/collections/{name}/writes/{id}` answers."""

    id: str
    collection: str
    kind: WriteKind
    state: WriteState
    items: int
    generation: int | None
    reason: str | None
    created: float
    finished: float | None


@dataclass(frozen=True)
class Touch:
    """The latest unfinished write of one document."""

    write_id: str
    kind: WriteKind
    document: Document | None  # the version written (upserts)


class JournalLocked(SemsearchError):
    """Another gateway process uses this journal folder."""


class WriteJournal:
    """The journal of one gateway process. Methods block on disk: call them from a thread
    (the writer and the routes use `asyncio.to_thread`); a lock serializes them."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._lock_file: IO[str] = open(folder / ".lock", "w")  # noqa: SIM115 (held for life)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise JournalLocked(
                f"the write journal {folder} is in use by another gateway process; give each "
                "gateway process its own SEMSEARCH_WRITE_JOURNAL_DIR"
            ) from None
        self._db = sqlite3.connect(
            folder / "journal.sqlite", isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: each commit's WAL frames are fsynced before COMMIT returns (NORMAL would only
        # sync at checkpoints, and a power loss could take back an acknowledged write)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._mutex = threading.Lock()
        row = self._db.execute(
            "SELECT coalesce(sum(bytes), 0), count(*) FROM writes WHERE state = 'pending'"
        ).fetchone()
        self.pending_bytes = int(row[0])
        self.pending_writes = int(row[1])
        metrics.WRITE_JOURNAL_BYTES.set(self.pending_bytes)

    def close(self) -> None:
        with self._mutex:
            self._db.close()
            self._lock_file.close()

    def append(
        self,
        collection: str,
        uid: str,
        kind: WriteKind,
        documents: Sequence[Document] = (),
        ids: Sequence[str] = (),
    ) -> JournaledWrite:
        """Journal one write; durable (fsynced) when this returns."""
        if kind is WriteKind.UPSERT:
            payload = json.dumps(
                [[d.id, d.text, d.title, d.metadata] for d in documents], ensure_ascii=False
            )
            touched = [d.id for d in documents]
        else:
            payload = json.dumps(list(ids), ensure_ascii=False)
            touched = list(ids)
        size = len(payload.encode())
        write_id = uuid.uuid4().hex
        now = time.time()
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(
                    "INSERT INTO writes (id, collection, uid, kind, payload, items, bytes, state,"
                    " created) VALUES (?,?,?,?,?,?,?,'pending',?)",
                    (
                        write_id,
                        collection,
                        uid,
                        kind.value,
                        payload,
                        len(touched),
                        size,
                        now,
                    ),
                )
                seq = int(cursor.lastrowid or 0)
                self._db.executemany(
                    "INSERT INTO touched (seq, collection, doc_id) VALUES (?,?,?)",
                    [(seq, collection, doc_id) for doc_id in dict.fromkeys(touched)],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.pending_bytes += size
            self.pending_writes += 1
            metrics.WRITE_JOURNAL_BYTES.set(self.pending_bytes)
        return JournaledWrite(
            seq, write_id, collection, uid, kind, list(documents), list(ids), size
        )

    def pending(self, collection: str, after: int = 0, max_items: int = 0) -> list[JournaledWrite]:
        """Pending writes of `collection` after `after`, in order; at least one, then up to
        `max_items` documents or ids in all (0: no limit)."""
        with self._mutex:
            rows = self._db.execute(
                "SELECT seq, id, uid, kind, payload, items, bytes FROM writes "
                "WHERE state = 'pending' AND collection = ? AND seq > ? ORDER BY seq",
                (collection, after),
            )
            found: list[JournaledWrite] = []
            items = 0
            for seq, write_id, uid, kind, payload, count, size in rows:
                if found and max_items and items + count > max_items:
                    break
                items += count
                data = json.loads(payload)
                kind = WriteKind(kind)
                documents = (
                    [Document(str(i), text, title, meta) for i, text, title, meta in data]
                    if kind is WriteKind.UPSERT
                    else []
                )
                ids = [str(i) for i in data] if kind is WriteKind.DELETE else []
                found.append(
                    JournaledWrite(seq, write_id, collection, uid, kind, documents, ids, size)
                )
            return found

    def pending_count(self, collection: str) -> int:
        with self._mutex:
            row = self._db.execute(
                "SELECT count(*) FROM writes WHERE state = 'pending' AND collection = ?",
                (collection,),
            ).fetchone()
        return int(row[0])

    def pending_collections(self) -> list[str]:
        with self._mutex:
            rows = self._db.execute(
                "SELECT DISTINCT collection FROM writes WHERE state = 'pending'"
            )
            return sorted(row[0] for row in rows)

    def finish(
        self,
        writes: Sequence[JournaledWrite],
        state: WriteState,
        generation: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Mark `writes` searchable (in `generation`) or failed (for `reason`), in one commit;
        their payloads are dropped (the index holds the documents now, or never will)."""
        if not writes:
            return
        seqs = [(w.seq,) for w in writes]
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # only the writes still pending count down (one finished already, e.g. failed
                # when its collection was deleted, must not be subtracted twice)
                still: set[int] = set()
                for at in range(0, len(seqs), 500):  # within SQLite's variables per statement
                    part = [seq for (seq,) in seqs[at : at + 500]]
                    still.update(
                        row[0]
                        for row in self._db.execute(
                            "SELECT seq FROM writes WHERE state = 'pending' AND seq IN "
                            f"({','.join('?' * len(part))})",
                            part,
                        )
                    )
                self._db.executemany(
                    "UPDATE writes SET state = ?, generation = ?, reason = ?, payload = NULL, "
                    "finished = ? WHERE seq = ? AND state = 'pending'",
                    [(state.value, generation, reason, time.time(), seq) for (seq,) in seqs],
                )
                self._db.executemany("DELETE FROM touched WHERE seq = ?", seqs)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finished = [w for w in writes if w.seq in still]
            self.pending_bytes -= sum(w.bytes for w in finished)
            self.pending_writes -= len(finished)
            metrics.WRITE_JOURNAL_BYTES.set(self.pending_bytes)

    def fail_collection(self, collection: str, reason: str) -> list[str]:
        """Fail every pending write of `collection` (it was deleted); returns their ids."""
        writes = self.pending(collection)
        self.finish(writes, WriteState.FAILED, reason=reason)
        return [w.id for w in writes]

    def status(self, collection: str, write_id: str) -> WriteStatus | None:
        with self._mutex:
            row = self._db.execute(
                "SELECT kind, state, items, generation, reason, created, finished FROM writes "
                "WHERE id = ? AND collection = ?",
                (write_id, collection),
            ).fetchone()
        if row is None:
            return None
        kind, state, items, generation, reason, created, finished = row
        return WriteStatus(
            write_id,
            collection,
            WriteKind(kind),
            WriteState(state),
            items,
            generation,
            reason,
            created,
            finished,
        )

    def latest_touch(self, collection: str, doc_id: str) -> Touch | None:
        """The newest unfinished write of document `doc_id`, or None."""
        with self._mutex:
            row = self._db.execute(
                "SELECT w.id, w.kind, w.payload FROM touched t JOIN writes w ON w.seq = t.seq "
                "WHERE t.collection = ? AND t.doc_id = ? ORDER BY t.seq DESC LIMIT 1",
                (collection, doc_id),
            ).fetchone()
        if row is None:
            return None
        write_id, kind, payload = row
        kind = WriteKind(kind)
        document = None
        if kind is WriteKind.UPSERT:
            for i, text, title, meta in reversed(json.loads(payload)):  # the last one counts
                if str(i) == doc_id:
                    document = Document(doc_id, text, title, meta)
                    break
        return Touch(write_id, kind, document)

    def prune(self, older_than_s: float) -> int:
        """Forget finished writes older than `older_than_s`; returns how many."""
        with self._mutex:
            cursor = self._db.execute(
                "DELETE FROM writes WHERE state != 'pending' AND finished < ?",
                (time.time() - older_than_s,),
            )
            return cursor.rowcount
