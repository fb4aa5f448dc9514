"""Adding the lexical index to a Qdrant collection written before lexical search existed.

Qdrant cannot add a sparse vector to an existing collection, so the collection is copied: into
`<name>--lexical` with the sparse vectors computed from the stored passages (nothing is
re-embedded: the dense vectors are copied as they are), then back under its own name. Every
step can be interrupted and the command run again: a partial copy is started over, and a
complete one (marked in its metadata) is what the original is rebuilt from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.index.analyzer import document_vector, terms
from app.index.qdrant.connection import (
    LEXICAL,
    META_KEY,
    QdrantOptions,
    create_collection,
    qdrant_models,
    read_meta,
)
from app.logs import get_logger

log = get_logger(__name__)
_PAGE = 256


def staging_name(name: str) -> str:
    return f"{name}--lexical"


async def add_lexical(
    client: Any, options: QdrantOptions, name: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """Give collection `name` its lexical index; returns its new metadata (one generation
    further, so gateways reload it and no cached dense-only answer is served for hybrid,
    with `changes` made to it).

    Raises:
        NotFound-like SemsearchError from read_meta; IndexUnavailable when Qdrant fails.
    """
    staging = staging_name(name)
    original = await read_meta(client, name)
    if original is not None and original.get("lexical"):
        return original  # done already (or written with it)
    copy = await read_meta(client, staging)
    if copy is None or not copy.get("complete"):
        if original is None:
            raise RuntimeError(f"neither {name!r} nor a complete copy of it exists in Qdrant")
        if copy is not None:
            await client.delete_collection(staging)  # an interrupted copy: start over
        avg_terms = await _average_terms(client, name)
        meta = {**original, "lexical": True, "avg_terms": avg_terms, "migrating": name}
        await create_collection(client, options, staging, meta)
        await _copy(client, name, staging, lambda v, p: _with_sparse(v, p, avg_terms))
        meta["complete"] = True
        await client.update_collection(staging, metadata={META_KEY: meta})
        copy = meta
        log.info("lexical_copy_written", collection=name, copy=staging)
    if original is not None or await client.collection_exists(name):
        await client.delete_collection(name)  # the original, or a partial copy back
    final = {k: v for k, v in copy.items() if k not in ("migrating", "complete")}
    final.update(changes, generation=int(final["generation"]) + 1)
    await create_collection(client, options, name, final)
    await _copy(client, staging, name, lambda v, p: v)
    await client.delete_collection(staging)
    log.info("lexical_index_added", collection=name, generation=final["generation"])
    return final


async def _average_terms(client: Any, name: str) -> float:
    points, _ = await client.scroll(name, limit=1024, with_payload=["title", "text"])
    lengths = [len(terms(_passage(p.payload or {}))) for p in points] or [1]
    return max(1.0, sum(lengths) / len(lengths))


def _passage(payload: dict[str, Any]) -> str:
    title, text = str(payload.get("title") or ""), str(payload.get("text") or "")
    return f"{title} {text}" if title else text


def _with_sparse(vector: Any, payload: dict[str, Any], avg_terms: float) -> Any:
    models = qdrant_models()
    dense = vector.get("", vector) if isinstance(vector, dict) else vector
    sparse = document_vector(_passage(payload), avg_terms)
    return {"": dense, LEXICAL: models.SparseVector(indices=sparse.indices, values=sparse.values)}


async def _copy(
    client: Any, source: str, target: str, vectors: Callable[[Any, dict[str, Any]], Any]
) -> None:
    """Every point of `source` into `target` (ids, payloads and, through `vectors`, vectors)."""
    models = qdrant_models()
    offset = None
    while True:
        points, offset = await client.scroll(
            source, limit=_PAGE, offset=offset, with_payload=True, with_vectors=True
        )
        if points:
            await client.upsert(
                target,
                points=[
                    models.PointStruct(
                        id=p.id, vector=vectors(p.vector, p.payload or {}), payload=p.payload
                    )
                    for p in points
                ],
                wait=True,
            )
        if offset is None:
            return
