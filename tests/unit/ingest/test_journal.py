"""The write journal: durable appends in order, statuses, the latest write of a document,
one gateway per folder, and what survives a reopen."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.ingest.journal import JournalLocked, WriteJournal, WriteKind, WriteState
from app.types import Document


def test_writes_survive_a_reopen_in_order_and_finish(tmp_path: Path) -> None:
    journal = WriteJournal(tmp_path)
    first = journal.append("c", "uid1", WriteKind.UPSERT, [Document("a", "text a", "T", {"k": 1})])
    second = journal.append("c", "uid1", WriteKind.DELETE, ids=["a", "b"])
    journal.append("other", "uid2", WriteKind.DELETE, ids=["x"])
    assert journal.pending_bytes == first.bytes + second.bytes + 5
    journal.close()

    journal = WriteJournal(tmp_path)  # as after a crash: everything acknowledged is there
    assert journal.pending_collections() == ["c", "other"]
    pending = journal.pending("c")
    assert [(w.id, w.kind) for w in pending] == [
        (first.id, WriteKind.UPSERT),
        (second.id, WriteKind.DELETE),
    ]
    assert pending[0].documents == [Document("a", "text a", "T", {"k": 1})]
    assert pending[1].ids == ["a", "b"]
    assert journal.pending("c", after=first.seq) == [pending[1]]
    assert [w.id for w in journal.pending("c", max_items=1)] == [first.id]
    touch = journal.latest_touch("c", "a")
    assert touch is not None and (touch.write_id, touch.kind) == (second.id, WriteKind.DELETE)

    journal.finish([pending[1]], WriteState.SEARCHABLE, generation=4)
    status = journal.status("c", second.id)
    assert status is not None
    assert (status.state, status.generation, status.items) == (WriteState.SEARCHABLE, 4, 2)
    touch = journal.latest_touch("c", "a")  # the delete is published: the upsert is latest
    assert touch is not None and touch.document == Document("a", "text a", "T", {"k": 1})
    assert journal.status("other", second.id) is None  # a write belongs to its collection
    assert journal.fail_collection("c", "the collection was deleted") == [first.id]
    failed = journal.status("c", first.id)
    assert failed is not None and failed.state is WriteState.FAILED
    assert failed.reason == "the collection was deleted"
    assert journal.latest_touch("c", "a") is None
    assert journal.pending_count("c") == 0 and journal.pending_count("other") == 1
    assert journal.prune(older_than_s=0) == 2
    journal.close()


def test_one_gateway_per_journal_folder(tmp_path: Path) -> None:
    journal = WriteJournal(tmp_path)
    with pytest.raises(JournalLocked, match="another gateway"):
        WriteJournal(tmp_path)
    journal.close()
    WriteJournal(tmp_path).close()


def test_finishing_a_write_twice_counts_it_down_once(tmp_path: Path) -> None:
    """A write failed when its collection was deleted and then reported searchable by a
    writer that had staged it: the journal's pending totals must not go below zero."""
    journal = WriteJournal(tmp_path)
    write = journal.append("c", "uid1", WriteKind.DELETE, ids=["a"])
    other = journal.append("c", "uid1", WriteKind.DELETE, ids=["b"])
    journal.fail_collection("c", "the collection was deleted")
    journal.finish([write], WriteState.SEARCHABLE, generation=2)
    assert (journal.pending_bytes, journal.pending_writes) == (0, 0)
    status = journal.status("c", write.id)
    assert status is not None and status.state is WriteState.FAILED  # the first word stands
    assert other.bytes > 0
    journal.close()
