"""Async HTTP clients for the embedder and reranker services, behind the same protocols.

They forward the request id, map the services' error responses back onto our exception tree,
and turn a service that cannot be reached into `Unavailable` so the pipeline can degrade.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from app.config import EmbedderSettings, GatewaySettings, RerankerSettings
from app.errors import (
    EmbedderUnavailable,
    RerankerUnavailable,
    SemsearchError,
    Unavailable,
    UpstreamError,
    error_for_status,
)
from app.logs import REQUEST_ID_HEADER, current_request_id, get_logger
from app.models import Embedder, Embeddings, Reranker, build_embedder, build_reranker
from app.protocol import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    InfoResponse,
    RankingRequest,
    RankingResponse,
    RankingText,
)
from app.types import InputType, ModelInfo, Truncate

log = get_logger(__name__)
R = TypeVar("R", bound=BaseModel)


class _ServiceClient:
    """What both clients share: a pooled httpx client, /info discovery and error mapping."""

    unavailable: type[Unavailable] = Unavailable
    kind = "model"

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout_s
        self._http: httpx.AsyncClient | None = None
        # Until the service first answers /info, it is known by its URL; the real model id
        # replaces this (and is kept through later outages, so cached answers stay findable).
        self._info = ModelInfo(
            model_id=self.base_url,
            kind=self.kind,
            dimension=None,
            max_tokens=0,
            backend="http",
            device="remote",
        )
        self._status = "connecting"

    @property
    def ready(self) -> bool:
        return self._status == "ready"

    @property
    def status(self) -> str:
        return self._status

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def healthy(self) -> bool:
        return True  # the remote service's health is its own (and its breaker's) business

    async def start(self) -> None:
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, 2.0)),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        await self.refresh_info()

    async def refresh_info(self) -> bool:
        """Ask the service what it serves; True once it has answered."""
        try:
            info = await self._call("GET", "/info", None, InfoResponse)
        except SemsearchError as exc:
            self._status = f"unreachable: {exc.message}"
            return False
        self._info = info.to_model_info()
        self._status = "ready"
        return True

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def _call(self, method: str, path: str, body: BaseModel | None, response: type[R]) -> R:
        if self._http is None:
            raise self.unavailable(f"{self.kind} client is not started")
        headers = {}
        request_id = current_request_id()
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        try:
            reply = await self._http.request(
                method,
                path,
                json=body.model_dump(mode="json", exclude_none=True) if body else None,
                headers=headers,
            )
        except httpx.TimeoutException as exc:
            raise self.unavailable(f"{self.kind} service timed out ({self._timeout}s)") from exc
        except httpx.HTTPError as exc:
            raise self.unavailable(
                f"{self.kind} service at {self.base_url} is unreachable: {exc!r}"
            ) from exc
        if reply.status_code >= 400:
            raise self._error(reply)
        try:
            return response.model_validate_json(reply.content)
        except ValidationError as exc:
            raise UpstreamError(f"{self.kind} service sent an unexpected answer: {exc}") from exc

    def _error(self, reply: httpx.Response) -> SemsearchError:
        try:
            detail: dict[str, Any] = reply.json()["error"]
            error_type, message = str(detail["type"]), str(detail["message"])
        except Exception:
            error_type, message = "unknown", reply.text[:200]
        error = error_for_status(reply.status_code, error_type, message)
        if isinstance(error, Unavailable) and not isinstance(error, self.unavailable):
            return self.unavailable(f"{self.kind} service: {message}")
        return error


class HttpEmbedder(_ServiceClient):
    """`Embedder` over HTTP, against our embedder service (OpenAI-shaped /v1/embeddings)."""

    unavailable = EmbedderUnavailable
    kind = "embedder"

    async def embed(
        self,
        texts: Sequence[str],
        input_type: InputType,
        truncate: Truncate = Truncate.NONE,
        normalize: bool = True,
    ) -> Embeddings:
        request = EmbeddingsRequest(
            input=list(texts),
            input_type=input_type,
            truncate=truncate,
            encoding_format="base64",
            normalize=normalize,
        )
        if not self.ready:
            await self.refresh_info()
        reply = await self._call("POST", "/v1/embeddings", request, EmbeddingsResponse)
        return Embeddings(vectors=reply.vectors(), prompt_tokens=reply.usage.prompt_tokens)


class HttpReranker(_ServiceClient):
    """`Reranker` over HTTP, against our reranker service (NVIDIA-shaped /v1/ranking)."""

    unavailable = RerankerUnavailable
    kind = "reranker"

    async def score(
        self, query: str, passages: Sequence[str], truncate: Truncate = Truncate.END
    ) -> list[float]:
        if truncate is Truncate.START:
            raise ValueError("the ranking API truncates at the END only")
        request = RankingRequest(
            query=RankingText(text=query),
            passages=[RankingText(text=p) for p in passages],
            truncate=truncate,
        )
        if not self.ready:
            await self.refresh_info()
        reply = await self._call("POST", "/v1/ranking", request, RankingResponse)
        scores = [0.0] * len(passages)
        for ranking in reply.rankings:
            scores[ranking.index] = ranking.logit
        return scores


def embedder_for(settings: GatewaySettings) -> Embedder:
    """The gateway's embedder: the service at `embedder_url`, else the model in-process."""
    if settings.embedder_url:
        return HttpEmbedder(settings.embedder_url, settings.model_timeout_s)
    return build_embedder(EmbedderSettings())


def reranker_for(settings: GatewaySettings) -> Reranker:
    """The gateway's reranker: the service at `reranker_url`, else the model in-process."""
    if settings.reranker_url:
        return HttpReranker(settings.reranker_url, settings.model_timeout_s)
    return build_reranker(RerankerSettings())
