"""The model seams: `Embedder` and `Reranker`, and how settings pick an implementation.

Implementations: in-process sentence-transformers (`app.models.local`, the only torch
importer), HTTP clients to the model services (`app.models.http`), and deterministic fakes
(`app.models.fake`) for tests and for running without weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from app.config import EmbedderSettings, RerankerSettings
from app.extras import require
from app.types import FloatArray, InputType, ModelInfo, Truncate


@dataclass(frozen=True, slots=True)
class Embeddings:
    """Unit-length float32 vectors, one row per input, and the tokens the model read."""

    vectors: FloatArray
    prompt_tokens: int


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length vectors (so inner product is cosine similarity)."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def ready(self) -> bool: ...

    @property
    def status(self) -> str:
        """`loading`, `ready` or `failed: <reason>`; shown by /ready."""
        ...

    @property
    def healthy(self) -> bool:
        """False when a loaded model keeps failing (/health turns 503 so it gets restarted)."""
        ...

    async def start(self) -> None:
        """Load (or connect) and warm up. Never raises: a failure shows in `status`."""
        ...

    async def stop(self) -> None: ...

    async def embed(
        self,
        texts: Sequence[str],
        input_type: InputType,
        truncate: Truncate = Truncate.NONE,
        normalize: bool = True,
    ) -> Embeddings:
        """Embed `texts`; unit length unless `normalize` is False (TEI's option).

        Raises:
            InputTooLong: a text is over the model window and `truncate` is NONE.
            Unavailable: the model is not loaded or the service cannot be reached.
        """
        ...


@runtime_checkable
class Reranker(Protocol):
    """Scores (query, passage) pairs with a cross-encoder; higher is more relevant."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def ready(self) -> bool: ...

    @property
    def status(self) -> str: ...

    @property
    def healthy(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def score(
        self, query: str, passages: Sequence[str], truncate: Truncate = Truncate.END
    ) -> list[float]:
        """Raw relevance logits, one per passage, in input order.

        Raises:
            InputTooLong: a pair is over the model window and `truncate` is NONE.
            Unavailable: the model is not loaded or the service cannot be reached.
        """
        ...


def readiness(model: Embedder | Reranker) -> dict[str, str]:
    """What /ready says of a model: which, on what (a backend label that says when float32
    batches still wait for their ONNX export), and its status."""
    return {"model": model.info.model_id, "backend": model.info.backend, "status": model.status}


def build_embedder(settings: EmbedderSettings) -> Embedder:
    """The in-process embedder the settings ask for (not started)."""
    if settings.backend == "fake":
        from app.models.fake import FakeEmbedder

        return FakeEmbedder(model_id=f"fake:{settings.model}")
    _require_models()
    from app.models.local import LocalEmbedder

    return LocalEmbedder(settings)


def build_reranker(settings: RerankerSettings) -> Reranker:
    """The in-process reranker the settings ask for (not started)."""
    if settings.backend == "fake":
        from app.models.fake import FakeReranker

        return FakeReranker(model_id=f"fake:{settings.model}")
    _require_models()
    from app.models.local import LocalReranker

    return LocalReranker(settings)


def _require_models() -> None:
    """torch, transformers and sentence-transformers: the `models` extra."""
    for module in ("torch", "transformers", "sentence_transformers"):
        require(
            module,
            "models",
            "in-process models",
            "or set SEMSEARCH_EMBEDDER_URL / SEMSEARCH_RERANKER_URL to use remote model services",
        )
