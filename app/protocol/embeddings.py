"""Embeddings: OpenAI `POST /v1/embeddings` (with NVIDIA's input_type and truncate) and TEI's
`POST /embed`."""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.protocol.common import StrictRequest, Texts
from app.types import FloatArray, InputType, Truncate


class EmbeddingsRequest(BaseModel):
    # OpenAI SDKs send fields we do not use (`user`); accept and ignore those.
    model_config = ConfigDict(extra="ignore")

    input: Texts = Field(description="One text or a list of texts.")
    model: str | None = Field(
        None,
        description="The served model's id (or its last path segment) or one of its aliases "
        "(`/v1/models`); another name is refused with 404.",
    )
    encoding_format: Literal["float", "base64"] = "float"
    input_type: InputType = Field(
        InputType.PASSAGE, description="NVIDIA: `query` or `passage` (asymmetric models)."
    )
    truncate: Truncate = Field(
        Truncate.NONE,
        description="NVIDIA: NONE refuses long inputs (422); START or END cut them. Not given: "
        "NONE, or END when the service truncates by default (auto_truncate).",
    )
    dimensions: int | None = Field(
        None, ge=1, description="OpenAI: keep the first N dimensions (renormalized)."
    )
    normalize: bool = Field(True, description="semsearch/TEI extension: unit-length vectors.")

    def texts(self) -> list[str]:
        return list(self.input)

    def asked_truncate(self) -> Truncate | None:
        """`truncate` when the request sets it; None leaves it to the service's default."""
        return self.truncate if "truncate" in self.model_fields_set else None


class TeiEmbedRequest(StrictRequest):
    """TEI `POST /embed`."""

    inputs: Texts
    normalize: bool = True
    truncate: bool = Field(
        False,
        description="Cut long inputs instead of refusing them (422). Not given: false, or true "
        "when the service truncates by default (auto_truncate).",
    )
    # huggingface_hub 1.x sends "Left"/"Right", 2.x "left"/"right"
    truncation_direction: Literal["Right", "Left", "right", "left"] = "Right"
    prompt_name: Literal["query", "passage"] | None = Field(
        None, description="TEI: which prompt to prepend; the service's query or passage prefix."
    )
    dimensions: int | None = Field(
        None, ge=1, description="Keep the first N dimensions (renormalized)."
    )

    def texts(self) -> list[str]:
        return list(self.inputs)

    def input_type(self) -> InputType:
        return InputType.QUERY if self.prompt_name == "query" else InputType.PASSAGE

    def asked_truncate(self) -> Truncate | None:
        """The truncation the request sets; None leaves it to the service's default."""
        if "truncate" not in self.model_fields_set:
            return None
        return self.direction() if self.truncate else Truncate.NONE

    def direction(self) -> Truncate:
        """Which end a cut removes."""
        return Truncate.START if self.truncation_direction.lower() == "left" else Truncate.END


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage

    @classmethod
    def build(
        cls, vectors: FloatArray, model: str, prompt_tokens: int, encoding_format: str
    ) -> EmbeddingsResponse:
        data = [
            EmbeddingData(
                index=i,
                embedding=(
                    base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode()
                    if encoding_format == "base64"
                    else row.tolist()
                ),
            )
            for i, row in enumerate(vectors)
        ]
        return cls(
            data=data,
            model=model,
            usage=Usage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
        )

    def vectors(self) -> FloatArray:
        rows = sorted(self.data, key=lambda d: d.index)
        return np.stack([_decode_embedding(d.embedding) for d in rows]).astype(np.float32)


def _decode_embedding(value: list[float] | str) -> FloatArray:
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)
