"""Documents over HTTP: writing, deleting and reading documents of a collection, and the
status of a write. Documents follow the rules of the JSONL input of `semsearch index`."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    WithJsonSchema,
    field_validator,
)

from app.errors import PayloadTooLarge
from app.ingest.journal import WriteStatus
from app.protocol.common import NOT_BLANK, StrictRequest, Text
from app.types import Document


def _doc_id(value: Any) -> Any:
    # JSONL ids may be strings or integers; booleans are neither
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _no_chunk_mark(value: str) -> str:
    if "#" in value:
        raise ValueError("must not contain '#' (it marks chunks: doc#3)")
    return value


DocId = Annotated[
    Text,
    BeforeValidator(_doc_id),
    Field(min_length=1, max_length=512),
    AfterValidator(_no_chunk_mark),
    # what the validators accept, said in the schema (clients and schemathesis read it)
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": 512, "pattern": "^[^#]*$"},
                {"type": "integer"},
            ]
        }
    ),
]


class DocumentIn(StrictRequest):
    id: DocId = Field(description="Stable id; writing it again replaces the document.")
    text: Text = Field(
        pattern=NOT_BLANK,
        description="The text to index (long texts are cut into chunks); not blank.",
    )
    title: Text = Field("", description="Optional title, searched with the text.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Optional JSON object, for filters."
    )

    @field_validator("metadata")
    @classmethod
    def _storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            stored = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except ValueError:
            raise ValueError(
                "holds NaN or Infinity (not JSON numbers; no index stores them)"
            ) from None
        try:
            stored.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("holds a lone surrogate: not valid Unicode") from None
        return value

    def to_document(self) -> Document:
        return Document(id=self.id, text=self.text, title=self.title, metadata=self.metadata)


class DocumentsWrite(StrictRequest):
    documents: list[DocumentIn] = Field(
        min_length=1,
        description="Documents to add or replace. An id given twice is written from its last "
        "occurrence.",
    )

    def to_documents(self, max_documents: int, max_chars: int) -> list[Document]:
        """The documents, within the gateway's limits.

        Raises:
            PayloadTooLarge: too many documents, or a text longer than `max_chars`.
        """
        if len(self.documents) > max_documents:
            raise PayloadTooLarge(
                f"{len(self.documents)} documents in one request; at most {max_documents}",
                field="documents",
            )
        for i, doc in enumerate(self.documents):
            if len(doc.text) > max_chars:
                raise PayloadTooLarge(
                    f"documents[{i}].text is {len(doc.text)} characters; at most {max_chars}",
                    field=f"documents[{i}].text",
                )
        return [doc.to_document() for doc in self.documents]


class DocumentsDelete(StrictRequest):
    ids: list[DocId] = Field(
        min_length=1, description="Ids of documents to delete (all their chunks)."
    )

    def to_ids(self, max_ids: int) -> list[str]:
        if len(self.ids) > max_ids:
            raise PayloadTooLarge(
                f"{len(self.ids)} ids in one request; at most {max_ids}", field="ids"
            )
        return list(dict.fromkeys(self.ids))


class WriteResponse(BaseModel):
    """An acknowledged write: durable, and searchable once `status` says so."""

    write_id: str
    collection: str
    kind: Literal["upsert", "delete"]
    status: Literal["pending", "searchable", "failed"] = Field(
        description="pending: journaled, not yet in a published generation; searchable: in "
        "`generation` (or a later one); failed: it will never be applied (`reason`)."
    )
    items: int = Field(description="Documents (or ids) in the write.")
    generation: int | None
    reason: str | None
    acknowledged_at: float = Field(description="Unix seconds.")
    finished_at: float | None

    @classmethod
    def from_status(cls, status: WriteStatus) -> WriteResponse:
        return cls(
            write_id=status.id,
            collection=status.collection,
            kind=status.kind.value,
            status=status.state.value,
            items=status.items,
            generation=status.generation,
            reason=status.reason,
            acknowledged_at=status.created,
            finished_at=status.finished,
        )


class ChunkOut(BaseModel):
    id: str
    text: str


class DocumentOut(BaseModel):
    id: str
    collection: str
    searchable: bool = Field(
        description="This version is in the generation searches see. False while the latest "
        "acknowledged write of the document is pending."
    )
    write_id: str | None = Field(description="The pending write this version comes from.")
    generation: int | None = Field(description="The generation searches find it in.")
    title: str
    text: str | None = Field(
        description="The whole text, when known: a pending version, or a document indexed in "
        "one piece. A chunked document's text is in its chunks (which overlap)."
    )
    metadata: dict[str, Any]
    chunks: list[ChunkOut] = Field(description="The records searches find, in order.")
