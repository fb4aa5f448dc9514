"""The reranker service: `uvicorn services.reranker.main:app` or `semsearch serve reranker`."""

from __future__ import annotations

from fastapi import FastAPI

from app.config import RerankerSettings
from app.logs import configure_logging
from app.models import build_reranker
from services.common import create_model_app
from services.reranker.routes import router


def create_app(settings: RerankerSettings | None = None) -> FastAPI:
    settings = settings or RerankerSettings()
    return create_model_app("reranker", settings, build_reranker(settings), router)


def __getattr__(name: str) -> FastAPI:
    # `uvicorn services.reranker.main:app` builds the app from the environment on first
    # access; importing this module (tests, the CLI) has no side effects.
    if name != "app":
        raise AttributeError(name)
    settings = RerankerSettings()
    configure_logging(settings.log_level, settings.log_format, "reranker")
    return create_app(settings)
