"""Async HTTP clients for the embedder and reranker services, behind the same protocols.

They forward the request id, map the services' error responses back onto our exception tree,
and turn a service that cannot be reached into `Unavailable` so the pipeline can degrade.

Requests go out through an `Exchange`: aiohttp over the network, or httpx's transports for an
app in-process (tests). aiohttp because the gateway's event loop pays for every call: one
embeddings call costs it 0.6-0.9 ms of CPU through this client against 2.0-2.5 ms through a
plain httpx client (same service, same run; bench/README "The gateway's HTTP client"), and
under overload that loop is the gateway's bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
import httpx
import numpy as np
from pydantic import BaseModel, ValidationError

from app import tracing
from app.errors import (
    EmbedderUnavailable,
    InvalidInput,
    RerankerUnavailable,
    RetryableError,
    SemsearchError,
    Unavailable,
    UpstreamError,
    error_for_status,
)
from app.logs import REQUEST_ID_HEADER, current_request_id, get_logger
from app.models import Embeddings
from app.models.priority import PRIORITY_HEADER, Priority, work_priority
from app.protocol.common import InfoResponse, field_name
from app.protocol.embeddings import EmbeddingsRequest, EmbeddingsResponse
from app.protocol.ranking import RankingRequest, RankingResponse
from app.resilience import TIMEOUT_HEADER, call_deadline
from app.types import FloatArray, InputType, ModelInfo, Truncate

log = get_logger(__name__)
R = TypeVar("R", bound=BaseModel)
# The service is asked for /info in the background, so `ready` says what it is now, not what it
# was when someone last searched: quickly (doubling from PROBE_FIRST_S to PROBE_MAX_S) while it
# does not answer, every PROBE_EVERY_S while it does. Each probe waits at most PROBE_TIMEOUT_S.
PROBE_FIRST_S = 0.2
PROBE_MAX_S = 2.0
PROBE_EVERY_S = 5.0
PROBE_TIMEOUT_S = 2.0
T = TypeVar("T")
_INDEXED_FIELD = re.compile(r"^(\w+)\[(\d+)\]")


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    content: bytes


class ExchangeTimeout(Exception):
    """The exchange's own timeout ran out (not the caller's deadline: see StageGuard)."""


class ExchangeError(Exception):
    """The service could not be reached, or dropped the exchange half-way."""


class Exchange(Protocol):
    """One HTTP request (headers sent as given) and its whole answer, on a pooled connection."""

    async def send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout_s: float
    ) -> Reply: ...

    async def aclose(self) -> None: ...


class AiohttpExchange:
    """The network, through aiohttp (made inside the running event loop: `start`)."""

    def __init__(self, base_url: str, connect_timeout_s: float) -> None:
        self._base_url = base_url
        # HTTP(S)_PROXY and NO_PROXY apply, as they did through httpx; read once here, because
        # aiohttp's trust_env reads them on a worker thread for every request.
        self._proxy = _env_proxy(base_url)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64),
            timeout=aiohttp.ClientTimeout(sock_connect=connect_timeout_s),
        )

    async def send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout_s: float
    ) -> Reply:
        try:
            async with self._session.request(
                method,
                self._base_url + path,
                data=body,
                headers=headers,
                proxy=self._proxy,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as reply:
                content = await reply.read()
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutErrors
            raise ExchangeTimeout(repr(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:  # OSError: a socket error it let through
            raise ExchangeError(repr(exc)) from exc
        names = {name.lower(): value for name, value in reply.headers.items()}
        return Reply(reply.status, names, content)

    async def aclose(self) -> None:
        await self._session.close()


def _env_proxy(base_url: str) -> str | None:
    """The proxy the environment names for `base_url` (None: connect directly)."""
    parts = urllib.parse.urlsplit(base_url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class HttpxExchange:
    """Through an httpx transport: an app in-process (`httpx.ASGITransport`) or a mock."""

    def __init__(self, base_url: str, transport: httpx.AsyncBaseTransport) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, transport=transport)

    async def send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout_s: float
    ) -> Reply:
        try:
            reply = await self._http.request(
                method, path, content=body, headers=headers, timeout=timeout_s
            )
        except httpx.TimeoutException as exc:
            raise ExchangeTimeout(repr(exc)) from exc
        except httpx.HTTPError as exc:
            raise ExchangeError(repr(exc)) from exc
        names = {name.lower(): value for name, value in reply.headers.items()}
        return Reply(reply.status_code, names, reply.content)

    async def aclose(self) -> None:
        await self._http.aclose()


class _ServiceClient:
    """What both clients share: a pooled connection, /info discovery and error mapping."""

    unavailable: type[Unavailable] = Unavailable
    kind = "model"

    def __init__(
        self,
        base_url: str,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`transport`: the network (aiohttp) unless given, e.g. an app in-process."""
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout_s
        self._transport = transport
        self._http: Exchange | None = None
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
        self._max_items: int | None = None  # texts per request, from the service's /info
        self._prober: asyncio.Task[None] | None = None

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
        self._http = (
            AiohttpExchange(self.base_url, connect_timeout_s=min(self._timeout, 2.0))
            if self._transport is None
            else HttpxExchange(self.base_url, self._transport)
        )
        answered = await self.refresh_info()
        self._prober = asyncio.create_task(self._probe(answered), name=f"probe-{self.kind}")

    async def refresh_info(self) -> bool:
        """Ask the service what it serves; True when it answered with a loaded model."""
        try:
            info = await self._call("GET", "/info", None, InfoResponse, PROBE_TIMEOUT_S)
        except SemsearchError as exc:
            if self._status == "ready":
                log.warning("model_service_lost", kind=self.kind, url=self.base_url)
            self._status = f"not ready: {exc.message}"
            return False
        if self._status != "ready":
            log.info("model_service_ready", kind=self.kind, url=self.base_url, model=info.model_id)
        self._info = info.to_model_info()
        self._max_items = info.max_items_per_request
        self._status = "ready"
        return True

    async def probe(self) -> bool:
        """Does the service answer now, with its model loaded? (For the breakers: /info is
        answered by the service's event loop, so a busy model does not make it late.)"""
        return await self.refresh_info()

    async def _probe(self, answered: bool) -> None:
        """Keep `status` current for /ready: a gateway started before its model services
        becomes ready on its own, with no search needed to find out."""
        delay = PROBE_EVERY_S if answered else PROBE_FIRST_S
        while True:
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # no herd of gateways
            if await self.refresh_info():
                delay = PROBE_EVERY_S
            else:
                delay = PROBE_FIRST_S if delay == PROBE_EVERY_S else min(2 * delay, PROBE_MAX_S)

    async def stop(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        if self._http is not None:
            await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        body: BaseModel | None,
        response: type[R],
        timeout_s: float | None = None,
    ) -> R:
        if self._http is None:
            raise self.unavailable(f"{self.kind} client is not started")
        headers: dict[str, str] = {}
        request_id = current_request_id()
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        if work_priority.get() is Priority.BULK:  # the service batches it behind queries
            headers[PRIORITY_HEADER] = "bulk"
        tracing.inject(headers)  # the service's span joins this search's trace
        deadline = call_deadline.get()
        if deadline is not None:  # how long we will wait: the service sheds what cannot make it
            remaining_ms = (deadline - time.monotonic()) * 1000
            headers[TIMEOUT_HEADER] = str(max(0, math.floor(remaining_ms)))
        waited = timeout_s if timeout_s is not None else self._timeout
        content = None
        if body is not None:
            content = body.model_dump_json(exclude_none=True).encode()
            headers["Content-Type"] = "application/json"
        try:
            reply = await self._http.send(method, path, content, headers, waited)
        except ExchangeTimeout as exc:
            raise self.unavailable(f"{self.kind} service timed out ({waited}s)") from exc
        except ExchangeError as exc:
            raise self.unavailable(
                f"{self.kind} service at {self.base_url} is unreachable: {exc}"
            ) from exc
        if reply.status >= 400:
            raise self._error(reply)
        try:
            return response.model_validate_json(reply.content)
        except ValidationError as exc:
            raise UpstreamError(f"{self.kind} service sent an unexpected answer: {exc}") from exc

    def _error(self, reply: Reply) -> SemsearchError:
        field: str | None = None
        try:
            detail: dict[str, Any] = json.loads(reply.content)["error"]
            error_type, message = str(detail["type"]), str(detail["message"])
            field = str(detail["field"]) if detail.get("field") is not None else None
        except Exception:
            error_type, message = "unknown", reply.content[:200].decode(errors="replace")
        error = error_for_status(reply.status, error_type, message)
        if isinstance(error, Unavailable) and not isinstance(error, self.unavailable):
            error = self.unavailable(f"{self.kind} service: {message}")
        error.field = field
        if isinstance(error, RetryableError):  # the service's estimate, for our own 429/503
            with contextlib.suppress(KeyError, ValueError):
                error.retry_after_s = max(float(reply.headers["retry-after"]), 0.0)
        return error

    async def _in_pieces(
        self, count: int, call: Callable[[int, int], Awaitable[list[T]]]
    ) -> list[T]:
        """`call(start, stop)` over `range(count)` in requests the service accepts (its
        max_items_per_request), one after another, results in order. An error naming an
        item (`input[3]`) names it by its index in the whole call."""
        if not self.ready:
            await self.refresh_info()
        size = self._max_items or count
        results: list[T] = []
        for start in range(0, count, size):
            try:
                results.extend(await call(start, min(start + size, count)))
            except SemsearchError as exc:
                if start and exc.field and (match := _INDEXED_FIELD.match(exc.field)):
                    index = int(match.group(2)) + start
                    exc.field = f"{match.group(1)}[{index}]" + exc.field[match.end() :]
                raise
        return results


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
        if not texts:
            return Embeddings(np.zeros((0, self._info.dimension or 0), np.float32), 0)
        tokens = 0

        async def piece(start: int, stop: int) -> list[FloatArray]:
            nonlocal tokens
            request = _build(
                EmbeddingsRequest,
                input=list(texts[start:stop]),
                input_type=input_type,
                truncate=truncate,
                encoding_format="base64",
                normalize=normalize,
            )
            reply = await self._call("POST", "/v1/embeddings", request, EmbeddingsResponse)
            tokens += reply.usage.prompt_tokens
            return list(reply.vectors())

        vectors = await self._in_pieces(len(texts), piece)
        return Embeddings(vectors=np.stack(vectors), prompt_tokens=tokens)


class HttpReranker(_ServiceClient):
    """`Reranker` over HTTP, against our reranker service (NVIDIA-shaped /v1/ranking)."""

    unavailable = RerankerUnavailable
    kind = "reranker"

    async def score(
        self, query: str, passages: Sequence[str], truncate: Truncate = Truncate.END
    ) -> list[float]:
        if truncate is Truncate.START:
            raise ValueError("the ranking API truncates at the END only")
        if not passages:
            return []

        async def piece(start: int, stop: int) -> list[float]:
            request = _build(
                RankingRequest,
                query={"text": query},
                passages=[{"text": p} for p in passages[start:stop]],
                truncate=truncate,
            )
            reply = await self._call("POST", "/v1/ranking", request, RankingResponse)
            scores = [0.0] * (stop - start)
            for ranking in reply.rankings:
                scores[ranking.index] = ranking.logit
            return scores

        return await self._in_pieces(len(passages), piece)


def _build(schema: type[R], **fields: Any) -> R:
    """The request, or `InvalidInput` naming the field (as the service would answer)."""
    try:
        return schema.model_validate(fields)
    except ValidationError as exc:
        problem = exc.errors()[0]
        field = field_name(problem["loc"])
        raise InvalidInput(f"{field}: {problem['msg']}", field=field) from exc
