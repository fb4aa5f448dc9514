"""The embedder service: `uvicorn services.embedder.main:app` or `semsearch serve embedder`."""

from __future__ import annotations

from fastapi import FastAPI

from app.config import EmbedderSettings
from app.logs import configure_logging
from app.models import build_embedder
from services.common import create_model_app
from services.embedder.routes import router


def create_app(settings: EmbedderSettings | None = None) -> FastAPI:
    settings = settings or EmbedderSettings()
    return create_model_app("embedder", settings, build_embedder(settings), router)


def __getattr__(name: str) -> FastAPI:
    # `uvicorn services.embedder.main:app` builds the app from the environment on first
    # access; importing this module (tests, the CLI) has no side effects.
    if name != "app":
        raise AttributeError(name)
    settings = EmbedderSettings()
    configure_logging(settings.log_level, settings.log_format, "embedder")
    return create_app(settings)
