"""The gateway: `uvicorn services.gateway.main:app` or `semsearch serve gateway`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.assembly import build_pipeline
from app.auth import ApiKeys
from app.config import EmbedderSettings, GatewaySettings, RerankerSettings
from app.ingest.writer import Writes
from app.logs import get_logger
from app.search.pipeline import SearchPipeline
from services import http
from services.gateway import documents
from services.gateway.routes import router

log = get_logger(__name__)


def create_app(
    settings: GatewaySettings | None = None, pipeline: SearchPipeline | None = None
) -> FastAPI:
    """The gateway app; `pipeline` may be given pre-built (tests inject fakes that way).
    Without it, the lifespan assembles one from `settings` and, for in-process models, the
    SEMSEARCH_EMBEDDER_* / SEMSEARCH_RERANKER_* settings."""
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        search = pipeline or build_pipeline(settings, EmbedderSettings(), RerankerSettings())
        # the write side shares the served collections and the embedder (writes go behind
        # searches in its queue); its journal is opened first, so a second gateway on the
        # same journal fails to start instead of applying the same writes twice
        writes = Writes.from_settings(settings, search.collections, search.embedder)
        app.state.pipeline = search
        app.state.writes = writes
        await search.start()
        await writes.start()
        upkeep = asyncio.create_task(_upkeep(search, settings.index_reload_interval_s))
        try:
            yield
        finally:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
            await writes.stop()
            await search.stop()

    app = FastAPI(title="semsearch gateway", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.api_keys = ApiKeys.from_settings(settings)  # a placeholder key fails start-up
    app.state.unhealthy = lambda: (
        app.state.pipeline.unhealthy() if hasattr(app.state, "pipeline") else None
    )
    http.install(app, "gateway", settings.max_request_bytes)
    app.include_router(router)
    app.include_router(documents.router)
    return app


async def _upkeep(pipeline: SearchPipeline, interval_s: float) -> None:
    """Pick up new index generations without a restart."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await pipeline.refresh()
        except Exception as exc:  # upkeep must outlive any one failure
            log.error("upkeep_failed", error=repr(exc))


__getattr__ = http.app_from_environment("gateway", GatewaySettings, create_app)
