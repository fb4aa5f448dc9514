"""What a Qdrant point holds (one version of one record) and which points a generation sees."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from app.index.analyzer import document_vector
from app.index.qdrant.connection import LEXICAL, qdrant_models
from app.types import Document, Filter, FloatArray, Hit

_NAMESPACE = uuid.UUID("7c4d2b1e-5a34-4f0e-9a57-1f3d1f6c2b90")


def point_id(record_id: str, generation: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{record_id}\x00{generation}"))


def view(generation: int, filter: Filter | None = None, extra: list[Any] | None = None) -> Any:
    """The points generation `generation` sees, narrowed by a metadata filter."""
    models = qdrant_models()

    return models.Filter(
        must=[
            models.FieldCondition(key="added", range=models.Range(lte=generation)),
            *_metadata_conditions(filter),
            *(extra or []),
        ],
        must_not=[models.FieldCondition(key="retired", range=models.Range(lte=generation))],
    )


def _metadata_conditions(filter: Filter | None) -> list[Any]:
    """Our filter as Qdrant conditions, with the same meaning as on FAISS: equality or "any
    of", matching a scalar field or any element of an array field."""
    if not filter:
        return []
    models = qdrant_models()

    must: list[Any] = []
    for field, value in filter.items():
        key = f"metadata.{field}"
        values = value if isinstance(value, list) else [value]
        options: list[Any] = []
        for v in values:
            if isinstance(v, int | float) and not isinstance(v, bool):  # 2 and 2.0 alike
                options.append(models.FieldCondition(key=key, range=models.Range(gte=v, lte=v)))
            else:
                options.append(models.FieldCondition(key=key, match=models.MatchValue(value=v)))
        must.append(options[0] if len(options) == 1 else models.Filter(should=options))
    return must


def hit(point: Any) -> Hit:
    payload = point.payload or {}
    return Hit(
        id=str(payload.get("id")),
        score=float(point.score),
        text=str(payload.get("text", "")),
        title=str(payload.get("title", "")),
        metadata=dict(payload.get("metadata") or {}),
    )


def point_vectors(vector: FloatArray, doc: Document, avg_terms: float | None) -> Any:
    """A point's dense vector and, in a collection with lexical search (`avg_terms` set), its
    sparse BM25 term weights."""
    if avg_terms is None:
        return vector.tolist()
    models = qdrant_models()
    sparse = document_vector(doc.passage, avg_terms)
    return {
        "": vector.tolist(),
        LEXICAL: models.SparseVector(indices=sparse.indices, values=sparse.values),
    }


def record(point: Any) -> tuple[Document, FloatArray]:
    """The record a point holds, and its dense vector."""
    payload = point.payload or {}
    vector = point.vector.get("", point.vector) if isinstance(point.vector, dict) else point.vector
    doc = Document(
        str(payload.get("id")),
        str(payload.get("text", "")),
        str(payload.get("title", "")),
        dict(payload.get("metadata") or {}),
        str(payload.get("parent", "")),
    )
    return doc, np.asarray(vector, dtype=np.float32)
