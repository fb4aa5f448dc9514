"""`semsearch search` (a running gateway) and `semsearch eval` (quality on a BEIR dataset)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.cli.common import cli, console, err, print_error
from app.config import EmbedderSettings, GatewaySettings, RerankerSettings
from app.errors import SemsearchError
from app.logs import configure_logging


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
    weights: Annotated[str, typer.Option(help="Rerank weights to sweep.")] = "0,0.25,0.5,0.75,1",
    rerank: Annotated[bool, typer.Option(help="Also evaluate dense + rerank.")] = True,
    chunk_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="Index in chunks of this many tokens (default: cut, as BEIR)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="JSON report (default var/eval/<name>-<split>.json).")
    ] = None,
) -> None:
    """Quality through the real search path: nDCG@10, recall@10/@100 and MRR@10 for dense,
    lexical (BM25), hybrid and hybrid + rerank; sweeps of the fusion method and weight and of
    the rerank depth and weight; ANN recall@10 against exact search. Indexes the corpus first
    (re-runs reuse it), calibrating its fusion weight as `semsearch index` does."""
    from app.evaluation.search import EvalConfig, evaluate_search

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
            models = (EmbedderSettings(), RerankerSettings())
            report = asyncio.run(evaluate_search(config, settings, models, advance))
        except SemsearchError as exc:
            print_error(exc)
            raise typer.Exit(1) from None
    measures = ["nDCG@10", "R@10", "R@100", "RR@10"]
    table = Table(title=f"{report.dataset} ({report.split}, {report.queries} queries)")
    table.add_column("run")
    for measure in measures:
        table.add_column(measure.replace("RR@10", "MRR@10"), justify="right")
    calibration = report.calibration
    calibrated = (
        f"w {calibration.weight:g}" if calibration and calibration.queries else "uncalibrated"
    )
    rows = [
        ("dense", report.dense),
        ("lexical (BM25)", report.lexical),
        (f"hybrid ({calibrated})", report.hybrid),
    ]
    if report.hybrid_rerank is not None:
        rows.append(("hybrid + rerank (settings)", report.hybrid_rerank.scores))
    if report.best is not None:
        best = report.best
        rows.append((f"best rerank: depth {best.depth}, w {best.weight}", best.scores))
    for label, values in rows:
        table.add_row(label, *(f"{values[m]:.4f}" for m in measures))
    console.print(table)
    fusion = Table(title="hybrid nDCG@10 by lexical weight (rows) and fusion method (columns)")
    fusion.add_column("weight")
    methods = list(dict.fromkeys(p.method for p in report.fusion_sweep))
    for method in methods:
        fusion.add_column(method, justify="right")
    for share in sorted({p.weight for p in report.fusion_sweep}):
        by = {p.method: p.scores["nDCG@10"] for p in report.fusion_sweep if p.weight == share}
        fusion.add_row(f"{share:g}", *(f"{by[m]:.4f}" for m in methods))
    console.print(fusion)
    if report.sweep:
        sweep = Table(title="hybrid + rerank nDCG@10 by depth (rows) and rerank weight (columns)")
        sweep.add_column("depth")
        for rerank_weight in config.weights:
            sweep.add_column(f"w={rerank_weight:g}", justify="right")
        for depth in config.depths:
            cells = {p.weight: p.scores["nDCG@10"] for p in report.sweep if p.depth == depth}
            sweep.add_row(str(depth), *(f"{cells[w]:.4f}" for w in config.weights))
        console.print(sweep)
    elif config.rerank:
        console.print(f"reranker not used: {report.reranker_status}")
    console.print(f"ANN recall@10 vs exact search: {report.ann_recall_at_10:.4f}")
    target = output or Path("var/eval") / f"{report.dataset}-{split}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report.to_json(), indent=2))
    console.print(f"wrote {target}")
