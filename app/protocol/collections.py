"""Collections over HTTP: `PUT` / `GET` / `DELETE /v1/collections/{name}`."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.protocol.common import StrictRequest


class CollectionCreate(StrictRequest):
    """`{}` creates the collection for the gateway's embedder with the default index options."""

    model: str | None = Field(
        None,
        min_length=1,
        description="The embedding model, fixed at creation. The gateway embeds with one model, "
        "so this may only name it (default: the gateway's embedder).",
    )


class CollectionInfo(BaseModel):
    name: str
    uid: str = Field(
        description="The collection's identity: a collection deleted and created again under "
        "the same name has another one."
    )
    model: str
    dimension: int
    backend: str = Field(description="The primary index: faiss or qdrant.")
    fallback: str | None = Field(description="The fallback copy's index, if there is one.")
    generation: int = Field(description="The published generation searches see (0: none yet).")
    documents: int = Field(description="Source documents in that generation.")
    chunks: int = Field(description="Records searched: documents, or their chunks.")
    lexical: bool = Field(description="The generation has a lexical (BM25) index.")
    last_publish: float | None = Field(
        description="When that generation was published (Unix seconds); null before the first."
    )
    pending_writes: int = Field(
        description="Writes this gateway acknowledged that are not searchable yet."
    )


class CollectionDeleted(BaseModel):
    name: str
    deleted: bool
    failed_writes: int = Field(
        description="Acknowledged writes that will never be applied (they are `failed`)."
    )
