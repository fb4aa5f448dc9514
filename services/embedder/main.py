"""The embedder service: `uvicorn services.embedder.main:app` or `semsearch serve embedder`."""

from __future__ import annotations

from fastapi import FastAPI

from app.config import EmbedderSettings
from app.models import build_embedder
from services.embedder.routes import router
from services.http import app_from_environment
from services.model_service import create_model_app


def create_app(settings: EmbedderSettings | None = None) -> FastAPI:
    settings = settings or EmbedderSettings()
    return create_model_app("embedder", settings, build_embedder(settings), router)


__getattr__ = app_from_environment("embedder", EmbedderSettings, create_app)
