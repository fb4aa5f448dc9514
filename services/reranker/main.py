"""The reranker service: `uvicorn services.reranker.main:app` or `semsearch serve reranker`."""

from __future__ import annotations

from fastapi import FastAPI

from app.config import RerankerSettings
from app.models import build_reranker
from services.http import app_from_environment
from services.model_service import create_model_app
from services.reranker.routes import router


def create_app(settings: RerankerSettings | None = None) -> FastAPI:
    settings = settings or RerankerSettings()
    return create_model_app("reranker", settings, build_reranker(settings), router)


__getattr__ = app_from_environment("reranker", RerankerSettings, create_app)
