"""`semsearch index` in-process with the fake embedder: what a user sees for good and bad
inputs, re-runs, and dry runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from app.cli import cli
from tests.conftest import DATA


@pytest.fixture
def index_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_BACKEND", "fake")
    monkeypatch.setenv("SEMSEARCH_INDEX_DIR", str(tmp_path / "index"))
    return tmp_path / "index"


def index(*args: str) -> Result:
    return CliRunner().invoke(cli, ["index", *args])


def summary(result: Result) -> dict[str, str]:
    """The rows of the summary table: {label: value}."""
    rows = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def test_fake_embedder_indexes_with_chunking(index_dir: Path) -> None:
    result = index(str(DATA / "corpus.jsonl"), "--collection", "c1")
    assert result.exit_code == 0, result.output
    assert summary(result)["added"] == "300"
    assert summary(result)["model"] == "fake:sentence-transformers/all-MiniLM-L6-v2"


def error_lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", b'{"id": "1", "text": "caf\xe9"}\n', "bad.jsonl:1: not UTF-8 text"),
        ("bad.jsonl", b'{"id":"1","text":"bad \\ud800 x"}\n', "bad.jsonl:1: `text` holds a lone"),
        ("bad.jsonl", b'{"id":"1","text":"x","metadata":{"x":NaN}}\n', "bad.jsonl:1: `metadata`"),
        ("bad.csv", b"id,body\n1,\n", "bad.csv:2: `body` must be a non-empty string"),
    ],
)
def test_bad_input_is_one_error_line_naming_the_place(
    index_dir: Path, tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    result = index(str(path), "--collection", "c1", "--text-column", "body")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert len(error_lines(result)) == 1 and message in error_lines(result)[0], result.output


def test_a_path_that_does_not_fit_the_format_is_refused_and_nothing_created(
    index_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "docs.jsonl").write_text('{"id": "1", "text": "x"}\n')
    for path, fmt in ((tmp_path, "jsonl"), (tmp_path / "docs.jsonl", "dir")):
        result = index(str(path), "--collection", "c1", "--format", fmt)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        assert len(error_lines(result)) == 1 and "directory" in error_lines(result)[0]
    assert not index_dir.exists()


def test_repeated_ids_are_reported_and_re_runs_change_nothing(
    index_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEMSEARCH_INDEX_BATCH_SIZE", "2")
    path = tmp_path / "dup.jsonl"
    path.write_text(
        '{"id": "a", "text": "v1"}\n{"id": "b", "text": "bee"}\n{"id": "a", "text": "v2"}\n'
    )
    first = index(str(path), "--collection", "c1")
    assert first.exit_code == 0, first.output
    assert summary(first)["added"] == "2" and summary(first)["generation"] == "1"
    assert summary(first)["duplicates ignored"] == "1"
    assert "warning: ignored 1 document(s) whose id comes again later" in first.output
    for _ in range(2):
        again = index(str(path), "--collection", "c1")
        assert summary(again)["unchanged"] == "2" and summary(again)["updated"] == "0"
        assert summary(again)["generation"].startswith("unchanged")


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below `root` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def test_a_dry_run_writes_nothing_anywhere(
    index_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "alpha"}\n{"id": "b", "text": "beta"}\n')
    fallback = tmp_path / "fallback"
    monkeypatch.setenv("SEMSEARCH_FALLBACK_INDEX_DIR", str(fallback))
    new = index(str(docs), "--collection", "ex", "--dry-run")  # a collection not there yet
    assert new.exit_code == 0, new.output
    assert summary(new)["added"] == "2"
    assert not index_dir.exists() and not fallback.exists()

    monkeypatch.delenv("SEMSEARCH_FALLBACK_INDEX_DIR")
    assert index(str(docs), "--collection", "ex").exit_code == 0  # primary only
    monkeypatch.setenv("SEMSEARCH_FALLBACK_INDEX_DIR", str(fallback))
    before = files_under(tmp_path)
    dry = index(str(docs), "--collection", "ex", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert files_under(tmp_path) == before  # no fallback copy, lock file or SQLite journal
    assert summary(dry)["updated"] == "2"  # the real run would write the fallback copy

    assert index(str(docs), "--collection", "ex").exit_code == 0  # both copies now
    before = files_under(tmp_path)
    dry = index(str(docs), "--collection", "ex", "--dry-run")
    assert files_under(tmp_path) == before
    assert summary(dry)["unchanged"] == "2"


def test_a_qdrant_folder_held_by_another_process_is_one_error_line(
    index_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qdrant_client import QdrantClient

    monkeypatch.setenv("SEMSEARCH_INDEX_BACKEND", "qdrant")
    holder = QdrantClient(path=str(index_dir / "qdrant"))  # as a running gateway would
    try:
        result = index(str(DATA / "corpus.jsonl"), "--collection", "c1")
    finally:
        holder.close()
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "is in use by another process" in error_lines(result)[0]


def test_the_fusion_weight_is_calibrated_and_kept(index_dir: Path) -> None:
    first = index(str(DATA / "corpus.jsonl"), "--collection", "c1")
    assert first.exit_code == 0, first.output
    weight = summary(first)["fusion weight"]
    assert "calibrated now" in weight and "pseudo-queries" in weight
    again = index(str(DATA / "corpus.jsonl"), "--collection", "c1")
    assert summary(again)["fusion weight"].replace("as calibrated before", "calibrated now") == (
        weight
    )


def test_a_dense_only_collection_is_not_calibrated(
    index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEMSEARCH_LEXICAL_INDEX", "false")
    result = index(str(DATA / "corpus.jsonl"), "--collection", "dense")
    assert result.exit_code == 0, result.output
    assert summary(result)["fusion weight"].startswith("none (no lexical index")


def test_rebuild_gives_an_old_collection_its_lexical_index(index_dir: Path) -> None:
    from tests.conftest import drop_lexical

    assert index(str(DATA / "corpus.jsonl"), "--collection", "old").exit_code == 0
    drop_lexical(index_dir, "old")
    result = CliRunner().invoke(cli, ["rebuild", "--collection", "old"])
    assert result.exit_code == 0, result.output
    assert "generation 2, lexical index yes, fusion weight" in result.output
    assert list((index_dir / "old" / "generations").glob("gen-000002/lexical"))
