"""Creating and deleting whole collections (what `PUT` / `DELETE /v1/collections/{name}` do),
in the primary index and in the FAISS fallback copy alike."""

from __future__ import annotations

import asyncio

from app.config import GatewaySettings
from app.errors import Conflict, IndexUnavailable, NotFound
from app.index.base import Collection
from app.index.collections import open_collection
from app.index.faiss.layout import CollectionLayout, WriterBusy
from app.index.qdrant.connection import QdrantOptions, clients, read_meta
from app.logs import get_logger

log = get_logger(__name__)


async def existing_model(settings: GatewaySettings, name: str) -> tuple[str, int] | None:
    """(model id, dimension) of collection `name` in the primary index, None if it does not
    exist.

    Raises:
        IndexUnavailable: the primary index (Qdrant) did not answer.
    """
    if settings.index_backend == "qdrant":
        options = QdrantOptions.from_settings(settings)
        client = clients.acquire(options)
        try:
            meta = await read_meta(client, name)
        finally:
            await clients.release(options)
        return None if meta is None else (str(meta["model"]), int(meta["dimension"]))
    layout = CollectionLayout(settings.index_dir, name)
    if not layout.exists():
        return None
    info = layout.read_info()
    return info.model_id, info.dimension


async def create_collection(
    settings: GatewaySettings, name: str, model_id: str, dimension: int
) -> tuple[Collection, bool]:
    """Collection `name` for `model_id`, opened for serving and writing; True when it was
    created now, False when it existed already with that model (creating is idempotent).

    Raises:
        Conflict: it exists with vectors of another model (the model is fixed at creation).
    """
    found = await existing_model(settings, name)
    if found is not None and found != (model_id, dimension):
        raise Conflict(
            f"collection {name!r} exists with vectors of {found[0]!r} ({found[1]}-d), not "
            f"{model_id!r} ({dimension}-d); the model of a collection is fixed when it is created",
            field="model",
        )
    index = await open_collection(settings, name, create=(model_id, dimension))
    if found is None:
        log.info("collection_created", collection=name, model=model_id, uid=index.uid)
    return index, found is None


async def delete_collection(settings: GatewaySettings, name: str) -> None:
    """Delete collection `name` everywhere it is stored: the primary index and the fallback
    copy. The caller has stopped its own writes to it first.

    Raises:
        NotFound: there is no such collection.
        Conflict: another process is writing it (`semsearch index`).
        IndexUnavailable: Qdrant did not answer.
    """
    if await existing_model(settings, name) is None:
        raise NotFound(f"collection {name!r} does not exist", field="name")
    if settings.index_backend == "qdrant":
        await _delete_qdrant(settings, name)
    else:
        await asyncio.to_thread(_delete_faiss, CollectionLayout(settings.index_dir, name))
    if settings.fallback_index_dir is not None:
        await asyncio.to_thread(_delete_faiss, CollectionLayout(settings.fallback_index_dir, name))
    log.info("collection_deleted", collection=name)


def _delete_faiss(layout: CollectionLayout) -> None:
    if not layout.root.exists():
        return
    try:
        with layout.writer_lock(wait_s=2.0):  # a writer's batch in flight finishes first
            layout.remove()
    except WriterBusy as exc:
        raise Conflict(
            f"collection {layout.name!r} is being written by another process "
            "(`semsearch index`?); delete it when that run has finished",
            field="name",
        ) from exc


async def _delete_qdrant(settings: GatewaySettings, name: str) -> None:
    options = QdrantOptions.from_settings(settings)
    client = clients.acquire(options)
    try:
        meta = await read_meta(client, name)
        if meta is None:
            raise NotFound(f"collection {name!r} does not exist", field="name")
        await client.delete_collection(name)
    except (NotFound, IndexUnavailable):
        raise
    except Exception as exc:
        raise IndexUnavailable(f"qdrant at {options.where}: {exc!r}") from exc
    finally:
        await clients.release(options)
