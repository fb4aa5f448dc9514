"""Gateway routes that write: collections (create, inspect, delete), their documents (write,
delete, read) and the status of a write. Each converts the request, calls `app.ingest.writer`
and shapes the answer."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import JSONResponse

from app.auth import Scope
from app.config import GatewaySettings
from app.index.faiss.layout import COLLECTION_NAME
from app.index.fallback import FallbackIndex
from app.ingest.journal import JournaledWrite, WriteState
from app.ingest.writer import Writes
from app.protocol.collections import CollectionCreate, CollectionDeleted, CollectionInfo
from app.protocol.common import ErrorResponse
from app.protocol.documents import (
    ChunkOut,
    DocumentOut,
    DocumentsDelete,
    DocumentsWrite,
    WriteResponse,
)
from services.gateway.routes import protected
from services.http import ERROR_RESPONSES

router = APIRouter(responses=ERROR_RESPONSES, tags=["collections"])

Name = Annotated[
    str,
    Path(
        description="Collection name: 1-64 letters, digits, '_', '-' or '.', starting with a "
        "letter or digit.",
        pattern=COLLECTION_NAME.pattern,
    ),
]
Wait = Annotated[
    bool,
    Query(
        description="Answer once the write is searchable (a generation was published for it), "
        "or 202 when `timeout_ms` passes first."
    ),
]
TimeoutMs = Annotated[
    int | None,
    Query(ge=1, le=600_000, description="How long `wait` waits (default 30000)."),
]
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": ErrorResponse}}
ACCEPTED: dict[int | str, dict[str, Any]] = {
    200: {"model": WriteResponse, "description": "`wait`: searchable (or failed)."},
    202: {"model": WriteResponse, "description": "Acknowledged: durable, pending."},
}


def _writes(request: Request) -> Writes:
    writes: Writes = request.app.state.writes
    return writes


def _settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


@router.put(
    "/v1/collections/{name}",
    response_model=CollectionInfo,
    status_code=201,
    summary="Create a collection (idempotent); `{}` uses the gateway's embedder.",
    **protected(
        Scope.ADMIN,
        {200: {"model": CollectionInfo, "description": "It existed already."}, **CONFLICT},
    ),
)
async def create_collection(
    name: Name, request: Request, body: CollectionCreate | None = None
) -> JSONResponse:
    created = await _writes(request).create_collection(name, body.model if body else None)
    info = await _describe(request, name)
    return JSONResponse(info.model_dump(), status_code=201 if created else 200)


@router.get(
    "/v1/collections/{name}",
    response_model=CollectionInfo,
    summary="A collection: model, generation, documents, chunks, backends, last publish.",
    **protected(Scope.READ),
)
async def get_collection(name: Name, request: Request) -> CollectionInfo:
    return await _describe(request, name)


@router.delete(
    "/v1/collections/{name}",
    response_model=CollectionDeleted,
    summary="Delete a collection, every copy of it; needs `?confirm=true`.",
    **protected(Scope.ADMIN, CONFLICT),
)
async def delete_collection(
    name: Name,
    request: Request,
    confirm: Annotated[
        Literal["true"],
        Query(description="Must be `true`: deleting a collection cannot be undone."),
    ],
) -> CollectionDeleted:
    failed = await _writes(request).delete_collection(name)
    return CollectionDeleted(name=name, deleted=True, failed_writes=failed)


@router.post(
    "/v1/collections/{name}/documents",
    response_model=WriteResponse,
    status_code=202,
    summary="Add or replace documents; acknowledged once durable, searchable at the next publish.",
    **protected(Scope.WRITE, {**ACCEPTED, **CONFLICT}),
)
async def write_documents(
    name: Name,
    body: DocumentsWrite,
    request: Request,
    wait: Wait = False,
    timeout_ms: TimeoutMs = None,
) -> JSONResponse:
    settings = _settings(request)
    documents = body.to_documents(settings.max_documents_per_request, settings.max_document_chars)
    write = await _writes(request).write(name, documents=documents)
    return await _acknowledge(request, write, wait, timeout_ms)


@router.delete(
    "/v1/collections/{name}/documents",
    response_model=WriteResponse,
    status_code=202,
    summary="Delete documents by id (with their chunks); acknowledged once durable.",
    **protected(Scope.WRITE, ACCEPTED),
)
async def delete_documents(
    name: Name,
    request: Request,
    body: Annotated[DocumentsDelete, Body()],
    wait: Wait = False,
    timeout_ms: TimeoutMs = None,
) -> JSONResponse:
    ids = body.to_ids(_settings(request).max_documents_per_request)
    write = await _writes(request).write(name, ids=ids)
    return await _acknowledge(request, write, wait, timeout_ms)


@router.get(
    "/v1/collections/{name}/documents/{doc_id:path}",
    response_model=DocumentOut,
    summary="A document and whether it is searchable yet (404 once its deletion is acknowledged).",
    **protected(Scope.READ),
)
async def get_document(
    name: Name,
    doc_id: Annotated[str, Path(min_length=1, description="The document's id.")],
    request: Request,
) -> DocumentOut:
    view = await _writes(request).document(name, doc_id)
    if view.document is not None:  # pending: the version written
        doc = view.document
        title, metadata = doc.title, doc.metadata
        text: str | None = doc.text
        chunks: list[ChunkOut] = []
    else:
        first = view.records[0]
        title = first.title
        text = first.text if len(view.records) == 1 else None
        metadata = {k: v for k, v in first.metadata.items() if k not in ("parent_id", "chunk")}
        chunks = [ChunkOut(id=r.id, text=r.text) for r in view.records]
    return DocumentOut(
        id=doc_id,
        collection=name,
        searchable=view.searchable,
        write_id=view.write_id,
        generation=view.generation,
        title=title,
        text=text,
        metadata=metadata,
        chunks=chunks,
    )


@router.get(
    "/v1/collections/{name}/writes/{write_id}",
    response_model=WriteResponse,
    summary="A write's status: pending, searchable (in which generation) or failed (why).",
    **protected(Scope.READ),
)
async def write_status(
    name: Name,
    write_id: Annotated[str, Path(min_length=1, description="What the write answered.")],
    request: Request,
) -> WriteResponse:
    return WriteResponse.from_status(await _writes(request).status(name, write_id))


async def _acknowledge(
    request: Request, write: JournaledWrite, wait: bool, timeout_ms: int | None
) -> JSONResponse:
    writes = _writes(request)
    if wait:
        timeout_s = (timeout_ms or _settings(request).write_timeout_ms) / 1000
        status = await writes.wait(write, timeout_s)
    else:
        status = await writes.status(write.collection, write.id)
    body = WriteResponse.from_status(status)
    code = 202 if status.state is WriteState.PENDING else 200
    return JSONResponse(body.model_dump(), status_code=code)


async def _describe(request: Request, name: str) -> CollectionInfo:
    writes = _writes(request)
    index = await writes.collections.get(name)
    stats = await index.stats()
    return CollectionInfo(
        name=name,
        uid=index.uid,
        model=index.model_id,
        dimension=index.dimension,
        backend=index.backend,
        fallback=index.fallback.backend if isinstance(index, FallbackIndex) else None,
        generation=index.generation,
        documents=stats.documents,
        chunks=stats.records,
        lexical=index.has_lexical,
        last_publish=stats.published_at,
        pending_writes=await writes.pending_writes(name),
    )
