"""`semsearch`: serve the services, index documents, search a running gateway.

Every flag's default comes from the settings classes, so a flag and its environment variable
always agree (`--port` <-> `SEMSEARCH_PORT`, and so on).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
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

from app.config import EmbedderSettings, GatewaySettings, RerankerSettings
from app.errors import SemsearchError
from app.indexing import CsvColumns, InputFormat
from app.logs import configure_logging

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err = Console(stderr=True)


class Service(StrEnum):
    embedder = "embedder"
    reranker = "reranker"
    gateway = "gateway"


@cli.command()
def serve(
    service: Annotated[Service, typer.Argument(help="Which service to run.")],
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
) -> None:
    """Run one service with uvicorn. With no model-service URLs set, the gateway runs both
    models in-process (the embedded default)."""
    import uvicorn

    overrides: dict[str, Any] = {k: v for k, v in {"host": host, "port": port}.items() if v}
    settings: EmbedderSettings | RerankerSettings | GatewaySettings
    if service is Service.embedder:
        from services.embedder.main import create_app as embedder_app

        settings = EmbedderSettings(**overrides)
        app = embedder_app(settings)
    elif service is Service.reranker:
        from services.reranker.main import create_app as reranker_app

        settings = RerankerSettings(**overrides)
        app = reranker_app(settings)
    else:
        from services.gateway.main import create_app as gateway_app

        settings = GatewaySettings(**overrides)
        app = gateway_app(settings)
    configure_logging(settings.log_level, settings.log_format, service.value)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)


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
    from app.indexing import read_id_list

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
    _run(_index(job, settings))


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
    _run(_delete(ids, collection or settings.default_collection, settings))


def _run(work: Any) -> None:
    try:
        asyncio.run(work)
    except SemsearchError as exc:
        _print_error(exc)
        raise typer.Exit(1) from None


def _print_error(exc: SemsearchError) -> None:
    """One line (never wrapped, never read as markup): it names the file, line and field."""
    err.print(f"[red]error:[/red] {escape(exc.message)}", soft_wrap=True)


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
    from app.clients import embedder_for
    from app.index.registry import open_collection, open_to_look, where
    from app.indexing import Chunker, count_documents, index_documents, read_documents

    total = count_documents(job.path, job.fmt)  # refuses a path that does not fit the format
    embedder = embedder_for(settings)
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
    ):
        table.add_row(name, str(value))
    console.print(table)
    if report.duplicates:
        err.print(
            f"[yellow]warning:[/yellow] ignored {report.duplicates} document(s) whose id comes "
            "again later in the input: the last occurrence of each id is the one indexed",
            soft_wrap=True,
        )


async def _delete(ids: list[str], collection: str, settings: GatewaySettings) -> None:
    from app.index.registry import open_collection

    store = await open_collection(settings, collection)
    try:
        found = await store.children(ids)
        records = [record for children in found.values() for record in children]
        if records:
            await store.delete(records)
        generation = await store.publish()
    finally:
        await store.close()
    missing = sorted(set(ids) - set(found))
    console.print(
        f"deleted {len(found)} documents ({len(records)} records); "
        f"generation {generation or 'unchanged'}"
    )
    if missing:
        console.print(f"not found: {', '.join(missing)}")


@cli.command()
def search(
    query: Annotated[str, typer.Argument(help="What to search for.")],
    url: Annotated[
        str | None, typer.Option(help="Gateway URL (default: settings host:port).")
    ] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Results to show.")] = 5,
    collection: Annotated[str | None, typer.Option(help="Collection to search.")] = None,
    rerank: Annotated[bool, typer.Option(help="Rerank with the cross-encoder.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON response.")] = False,
) -> None:
    """Search a running gateway and print the results."""
    if url is None:
        settings = GatewaySettings()
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        url = f"http://{host}:{settings.port}"
    body: dict[str, Any] = {"query": query, "top_k": top_k, "rerank": rerank}
    if collection:
        body["collection"] = collection
    try:
        reply = httpx.post(f"{url.rstrip('/')}/v1/search", json=body, timeout=60)
    except httpx.HTTPError as exc:
        err.print(f"[red]error:[/red] cannot reach the gateway at {url}: {exc}")
        raise typer.Exit(1) from None
    data = reply.json()
    if reply.status_code != 200:
        error = data.get("error", {})
        err.print(f"[red]{reply.status_code} {error.get('type')}:[/red] {error.get('message')}")
        raise typer.Exit(1)
    if as_json:
        console.print_json(json.dumps(data))
        return
    table = Table(title=f"{query!r}", show_lines=True)
    for column in ("rank", "score", "id", "passage"):
        table.add_column(column)
    for hit in data["results"]:
        text = (
            f"[bold]{hit['title']}[/bold]\n{hit['text'][:300]}"
            if hit["title"]
            else hit["text"][:300]
        )
        table.add_row(str(hit["rank"]), f"{hit['score']:.3f}", hit["id"], text)
    console.print(table)
    console.print(
        f"reranked={data['reranked']} degraded={data['degraded']} cached={data['cached']} "
        f"generation={data['index']['generation']} total={data['timings_ms']['total']:.1f} ms"
    )


@cli.command("eval")
def eval_command(
    dataset: Annotated[
        Path,
        typer.Argument(
            exists=True, file_okay=False, help="A BEIR folder: corpus.jsonl, queries.jsonl, qrels/."
        ),
    ],
    split: Annotated[str, typer.Option(help="qrels/<split>.tsv to score.")] = "test",
    collection: Annotated[
        str | None, typer.Option(help="Collection to (re)use; default eval-<name>.")
    ] = None,
    depths: Annotated[str, typer.Option(help="Rerank depths to sweep.")] = "10,20,30",
    weights: Annotated[str, typer.Option(help="Fusion weights to sweep.")] = "0,0.25,0.5,0.75,1",
    rerank: Annotated[bool, typer.Option(help="Also evaluate dense + rerank.")] = True,
    chunk_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="Index in chunks of this many tokens (default: cut, as BEIR)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="JSON report (default var/eval/<name>-<split>.json).")
    ] = None,
) -> None:
    """Quality through the real search path: nDCG@10, recall@10/@100 and MRR@10 for dense-only
    and dense + rerank, a sweep of fusion weight x rerank depth, and ANN recall@10 against
    exact search. Indexes the corpus first (re-runs reuse it)."""
    from app.evaluation import EvalConfig, evaluate_search

    settings = GatewaySettings()
    configure_logging("warning", settings.log_format, "eval")
    config = EvalConfig(
        dataset=dataset,
        split=split,
        collection=collection,
        rerank=rerank,
        depths=tuple(int(d) for d in depths.split(",")),
        weights=tuple(float(w) for w in weights.split(",")),
        chunk_tokens=chunk_tokens,
    )
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    tasks: dict[str, Any] = {}

    def advance(stage: str, n: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total)
        progress.advance(tasks[stage], n)

    with progress:
        try:
            report = asyncio.run(evaluate_search(config, settings, advance))
        except SemsearchError as exc:
            _print_error(exc)
            raise typer.Exit(1) from None
    measures = ["nDCG@10", "R@10", "R@100", "RR@10"]
    table = Table(title=f"{report['dataset']} ({report['split']}, {report['queries']} queries)")
    table.add_column("run")
    for measure in measures:
        table.add_column(measure.replace("RR@10", "MRR@10"), justify="right")
    rows = [("dense", report["dense"])]
    if report.get("dense_rerank"):
        rows.append(("dense + rerank (settings)", report["dense_rerank"]))
        best = report["best"]
        rows.append((f"best: depth {best['depth']}, w {best['weight']}", best))
    for label, values in rows:
        table.add_row(label, *(f"{values[m]:.4f}" for m in measures))
    console.print(table)
    if report.get("sweep"):
        sweep = Table(title="nDCG@10 by rerank depth (rows) and weight w (columns)")
        sweep.add_column("depth")
        for weight in config.weights:
            sweep.add_column(f"w={weight:g}", justify="right")
        for depth in config.depths:
            cells = {s["weight"]: s["nDCG@10"] for s in report["sweep"] if s["depth"] == depth}
            sweep.add_row(str(depth), *(f"{cells[w]:.4f}" for w in config.weights))
        console.print(sweep)
    elif config.rerank:
        console.print(f"reranker not used: {report.get('reranker_status')}")
    recall = report["ann_recall@10"]
    console.print(
        f"ANN recall@10 vs exact search: {recall:.4f}"
        if recall is not None
        else "ANN recall@10: not measured (this index backend has no exact search to compare)"
    )
    target = output or Path("var/eval") / f"{report['dataset']}-{split}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {target}")


@cli.command("hash-key")
def hash_key(
    key: Annotated[
        str | None, typer.Argument(help="The key; a new random one when omitted.")
    ] = None,
) -> None:
    """Print an API key's `sha256:` digest, for SEMSEARCH_API_KEYS or a keys file."""
    import secrets

    from app.auth import digest

    if key is None:
        key = secrets.token_urlsafe(32)
        console.print(f"key:    {key}")
    console.print(f"digest: {digest(key)}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
