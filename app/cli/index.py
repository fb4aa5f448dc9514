"""`semsearch index` and `semsearch delete`: writing collections."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from app.cli.common import cli, console, err, run
from app.config import EmbedderSettings, GatewaySettings
from app.errors import SemsearchError
from app.ingest.readers import CsvColumns, InputFormat
from app.logs import configure_logging
from app.types import Calibration


def _indexing_embedder() -> EmbedderSettings:
    """The embedder's settings for a batch job: its batches are large (bfloat16 on torch), so
    the ONNX Runtime export for float32 batches would only take CPU from it, and be killed
    when a short job ends."""
    return EmbedderSettings(float32_on_onnx=False)


class Format(StrEnum):
    auto = "auto"
    jsonl = "jsonl"
    csv = "csv"
    dir = "dir"


@cli.command()
def index(
    path: Annotated[Path, typer.Argument(exists=True, help="JSONL, CSV/TSV, or a directory.")],
    collection: Annotated[str | None, typer.Option(help="Collection to write.")] = None,
    index_dir: Annotated[Path | None, typer.Option(help="Where collections live.")] = None,
    fmt: Annotated[
        Format, typer.Option("--format", help="Input format (auto: by extension).")
    ] = Format.auto,
    id_column: Annotated[str, typer.Option(help="CSV: the id column.")] = "id",
    text_column: Annotated[str, typer.Option(help="CSV: the text column.")] = "text",
    title_column: Annotated[
        str, typer.Option(help="CSV: the title column (if present).")
    ] = "title",
    metadata_columns: Annotated[
        str | None, typer.Option(help="CSV: comma-separated metadata columns (default: the rest).")
    ] = None,
    chunk_tokens: Annotated[
        int | None,
        typer.Option(min=0, help="Tokens per chunk (default: the model window; 0: no chunking)."),
    ] = None,
    chunk_overlap: Annotated[
        int, typer.Option(min=0, help="Tokens shared by neighbouring chunks.")
    ] = 32,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Documents per batch.")] = None,
    delete: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="A file of document ids to delete."),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Report what would change; write nothing.")] = False,
) -> None:
    """Index documents into a collection: JSONL (`id`, `text`, optional `title`, `metadata`),
    CSV/TSV with a header row, or a directory of .txt/.md files.

    Long documents are cut into overlapping chunks that fit the model (`doc#0`, `doc#1`, ...).
    Re-running on the same input changes nothing; changed documents are re-embedded; an
    interrupted run continues where it stopped.
    """
    from app.ingest.readers import read_id_list

    overrides: dict[str, Any] = {"index_dir": index_dir, "index_batch_size": batch_size}
    settings = GatewaySettings(**{k: v for k, v in overrides.items() if v is not None})
    configure_logging("warning", settings.log_format, "indexer")
    columns = CsvColumns(
        id=id_column,
        text=text_column,
        title=title_column,
        metadata=tuple(c.strip() for c in metadata_columns.split(","))
        if metadata_columns
        else None,
    )
    job = IndexJob(
        path=path,
        collection=collection or settings.default_collection,
        fmt=fmt.value,
        columns=columns,
        chunk_tokens=chunk_tokens,
        chunk_overlap=chunk_overlap,
        delete=read_id_list(delete) if delete else [],
        dry_run=dry_run,
    )
    run(_index(job, settings))


@cli.command("delete")
def delete_documents(
    ids: Annotated[list[str], typer.Argument(help="Document ids (with all their chunks).")],
    collection: Annotated[str | None, typer.Option(help="Collection to change.")] = None,
    index_dir: Annotated[Path | None, typer.Option(help="Where collections live.")] = None,
) -> None:
    """Delete documents from a collection and publish the change."""
    overrides: dict[str, Any] = {"index_dir": index_dir}
    settings = GatewaySettings(**{k: v for k, v in overrides.items() if v is not None})
    configure_logging("warning", settings.log_format, "indexer")
    run(_delete(ids, collection or settings.default_collection, settings))


@dataclass(frozen=True)
class IndexJob:
    path: Path
    collection: str
    fmt: InputFormat
    columns: CsvColumns
    chunk_tokens: int | None
    chunk_overlap: int
    delete: list[str]
    dry_run: bool


async def _index(job: IndexJob, settings: GatewaySettings) -> None:
    from app.assembly import embedder_for
    from app.index.collections import open_collection, open_to_look, where
    from app.ingest.chunking import Chunker
    from app.ingest.indexer import index_documents
    from app.ingest.readers import count_documents, read_documents

    total = count_documents(job.path, job.fmt)  # refuses a path that does not fit the format
    embedder = embedder_for(settings, _indexing_embedder())
    with console.status(f"loading the embedder ({embedder.info.model_id})"):
        await embedder.start()
    if not embedder.ready:
        raise SemsearchError(f"the embedder is not usable: {embedder.status}")
    model = embedder.info
    chunker = None
    if job.chunk_tokens != 0:
        chunker = Chunker.for_model(model, job.chunk_tokens, job.chunk_overlap)
    if job.dry_run:
        store: Any = await open_to_look(
            settings, job.collection, model.model_id, model.dimension or 0
        )
    else:
        store = await open_collection(
            settings, job.collection, create=(model.model_id, model.dimension or 0)
        )
    progress = Progress(
        TextColumn("[bold]indexing" if not job.dry_run else "[bold]checking"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]} docs/s"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )
    try:
        with progress:
            task = progress.add_task("index", total=total, rate="-")

            def advance(n: int) -> None:
                progress.advance(task, n)
                elapsed = progress.tasks[task].elapsed or 0.0
                done = progress.tasks[task].completed
                progress.update(task, rate=f"{done / elapsed:.1f}" if elapsed else "-")

            report = await index_documents(
                read_documents(job.path, job.fmt, job.columns),
                store,
                embedder,
                chunker=chunker,
                batch_size=settings.index_batch_size,
                delete=job.delete,
                dry_run=job.dry_run,
                on_batch=advance,
            )
        calibration = None if job.dry_run else store.calibration
        lexical = job.dry_run or store.publishes_lexical
    finally:
        await store.close()
        await embedder.stop()
    title = f"collection {job.collection!r} in {where(settings)}"
    table = Table(
        title=title + (" (dry run: nothing written)" if job.dry_run else ""), show_header=False
    )
    for name, value in (
        ("documents read", report.read),
        ("added", report.added),
        ("updated", report.updated),
        ("unchanged", report.unchanged),
        ("deleted", report.deleted),
        ("duplicates ignored", report.duplicates),
        ("chunks written / removed", f"{report.records_written} / {report.records_removed}"),
        ("time", f"{report.seconds:.1f} s"),
        ("rate", f"{report.docs_per_s:.1f} docs/s"),
        (
            "generation",
            report.generation if report.generation else "unchanged (nothing to publish)",
        ),
        ("model", model.model_id),
        ("fusion weight", _calibrated(calibration, report.calibrated, lexical)),
    ):
        table.add_row(name, str(value))
    console.print(table)
    if report.duplicates:
        err.print(
            f"[yellow]warning:[/yellow] ignored {report.duplicates} document(s) whose id comes "
            "again later in the input: the last occurrence of each id is the one indexed",
            soft_wrap=True,
        )


def _calibrated(calibration: Calibration | None, measured: bool, lexical: bool) -> str:
    """The hybrid search's lexical share, and where it comes from."""
    if not lexical:
        return "none (no lexical index: dense search only)"
    if calibration is None:
        return "-"
    if not calibration.queries:
        return f"{calibration.weight:g} (too few documents of several sentences to calibrate)"
    how = "calibrated now" if measured else "as calibrated before"
    return f"{calibration.weight:g} ({how}, {calibration.queries} pseudo-queries)"


async def _delete(ids: list[str], collection: str, settings: GatewaySettings) -> None:
    from app.index.collections import open_collection
    from app.ingest.indexer import index_documents

    store = await open_collection(settings, collection)
    try:
        found = await store.children(ids)
        # the indexing core, with nothing to embed: no model is loaded for a deletion
        report = await index_documents([], store, None, delete=ids)
    finally:
        await store.close()
    missing = sorted(set(ids) - set(found))
    console.print(
        f"deleted {report.deleted} documents ({report.records_removed} records); "
        f"generation {report.generation or 'unchanged'}"
    )
    if missing:
        console.print(f"not found: {', '.join(missing)}")


@cli.command()
def rebuild(
    collection: Annotated[str | None, typer.Option(help="Collection to rebuild.")] = None,
    index_dir: Annotated[Path | None, typer.Option(help="Where collections live.")] = None,
) -> None:
    """Publish a collection anew from what it stores: every index rebuilt (a collection indexed
    before lexical search gets its lexical index) and its fusion weight calibrated again.
    Nothing is re-embedded; only the calibration's pseudo-queries are."""
    overrides: dict[str, Any] = {"index_dir": index_dir}
    settings = GatewaySettings(**{k: v for k, v in overrides.items() if v is not None})
    configure_logging("warning", settings.log_format, "indexer")
    run(_rebuild(collection or settings.default_collection, settings))


async def _rebuild(name: str, settings: GatewaySettings) -> None:
    from app.assembly import embedder_for
    from app.index.collections import open_collection
    from app.search.calibration import calibrate

    embedder = embedder_for(settings, _indexing_embedder())
    with console.status(f"loading the embedder ({embedder.info.model_id})"):
        await embedder.start()
    if not embedder.ready:
        raise SemsearchError(f"the embedder is not usable: {embedder.status}")
    store = await open_collection(settings, name)
    try:
        if store.model_id != embedder.info.model_id:
            raise SemsearchError(
                f"collection {name!r} holds vectors of {store.model_id!r}; the embedder is "
                f"{embedder.info.model_id!r} (set SEMSEARCH_EMBEDDER_MODEL to the collection's)"
            )
        with console.status("calibrating the fusion weight"):
            calibration = await calibrate(store, embedder, force=True)
        with console.status("publishing"):
            generation = await store.publish(rebuild=True, calibration=calibration)
        lexical = store.has_lexical
    finally:
        await store.close()
        await embedder.stop()
    weight = f"{calibration.weight:g}" if calibration and calibration.queries else "uncalibrated"
    console.print(
        f"collection {name!r}: generation {generation}, lexical index "
        f"{'yes' if lexical else 'no'}, fusion weight {weight}"
    )
